//! A minimal OTLP/gRPC trace receiver: accepts `ExportTraceServiceRequest`s,
//! counts spans, and keeps the running totals in a small JSON file
//! (`{"exports":N,"spans":N}`, replaced atomically after every export) so
//! the harness can check that traces arrived without speaking gRPC.
//!
//!   otlp-sink --addr 127.0.0.1:4317 --count-file spans.json

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Mutex};

use bench_bare::{terminated, Flags};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Totals {
    exports: u64,
    spans: u64,
}

struct Sink {
    totals: Mutex<Totals>,
    count_file: PathBuf,
}

impl Sink {
    fn write(&self, totals: &Totals) -> std::io::Result<()> {
        let tmp = self.count_file.with_extension("tmp");
        std::fs::write(
            &tmp,
            format!(
                "{{\"exports\":{},\"spans\":{}}}\n",
                totals.exports, totals.spans
            ),
        )?;
        std::fs::rename(tmp, &self.count_file)
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = req
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        let mut totals = self
            .totals
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        totals.exports += 1;
        totals.spans += spans as u64;
        // The file is small and written under the lock, so totals on disk
        // never go backwards.
        self.write(&totals)
            .map_err(|e| Status::internal(format!("count file: {e}")))?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otlp-sink: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<(), String> {
    let flags = Flags::parse(std::env::args().skip(1))?;
    let addr: SocketAddr = flags
        .get("addr")
        .unwrap_or("127.0.0.1:4317")
        .parse()
        .map_err(|e| format!("--addr: {e}"))?;
    let sink = Sink {
        totals: Mutex::new(Totals::default()),
        count_file: PathBuf::from(flags.required("count-file")?),
    };
    sink.write(&Totals::default())
        .map_err(|e| format!("{}: {e}", sink.count_file.display()))?;
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink).max_decoding_message_size(64 << 20))
        .serve_with_shutdown(addr, terminated())
        .await
        .map_err(|e| format!("serve {addr}: {e}"))
}
