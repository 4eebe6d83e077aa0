//! docs/api.md, the API reference, is generated from the proto comments in
//! the descriptor set the server embeds (the same one reflection serves),
//! so it cannot describe a contract other than the one that runs.
//!
//! This test fails when the checked-in file differs from what the proto
//! says; `UPDATE_API_REFERENCE=1 cargo test --test it api_reference`
//! rewrites it.

use std::fmt::Write as _;

use prost::Message as _;
use prost_types::{
    field_descriptor_proto::{Label, Type},
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, ServiceDescriptorProto,
};

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md");

// Field numbers inside FileDescriptorProto / DescriptorProto, used as
// source-info paths (descriptor.proto: message_type = 4, enum_type = 5,
// service = 6; DescriptorProto.field = 2, EnumDescriptorProto.value = 2,
// ServiceDescriptorProto.method = 2).
const MESSAGE: i32 = 4;
const ENUM: i32 = 5;
const SERVICE: i32 = 6;
const CHILD: i32 = 2;

#[test]
fn api_reference_matches_the_proto() {
    let set = FileDescriptorSet::decode(user_service::pb::FILE_DESCRIPTOR_SET)
        .expect("embedded descriptor set decodes");
    let rendered = render(&set);
    if std::env::var_os("UPDATE_API_REFERENCE").is_some() {
        std::fs::write(REFERENCE, &rendered).expect("write docs/api.md");
        return;
    }
    let checked_in = std::fs::read_to_string(REFERENCE).unwrap_or_default();
    assert!(
        checked_in == rendered,
        "docs/api.md is out of date with proto/: regenerate it with \
         `UPDATE_API_REFERENCE=1 cargo test --test it api_reference` and commit it"
    );
}

fn render(set: &FileDescriptorSet) -> String {
    let mut out = String::from(
        "<!-- Generated from the proto comments by \
         `UPDATE_API_REFERENCE=1 cargo test --test it api_reference`. Do not edit. -->\n\n",
    );
    for file in set.file.iter().filter(|f| f.package() == "user.v1") {
        let doc = Comments(file);
        let _ = writeln!(out, "# `{}` API reference\n", file.package());
        let _ = writeln!(out, "Source: `proto/{}`.\n", file.name());
        let header = doc.header();
        if !header.is_empty() {
            let _ = writeln!(out, "{header}\n");
        }
        for (i, service) in file.service.iter().enumerate() {
            render_service(&mut out, &doc, i as i32, service, file.package());
        }
        let _ = writeln!(out, "## Messages\n");
        for (i, message) in file.message_type.iter().enumerate() {
            render_message(&mut out, &doc, i as i32, message);
        }
        let _ = writeln!(out, "## Enums\n");
        for (i, e) in file.enum_type.iter().enumerate() {
            render_enum(&mut out, &doc, i as i32, e);
        }
    }
    // One trailing newline, whatever the last section wrote.
    format!("{}\n", out.trim_end())
}

fn render_service(
    out: &mut String,
    doc: &Comments,
    index: i32,
    service: &ServiceDescriptorProto,
    package: &str,
) {
    let _ = writeln!(out, "## Service `{package}.{}`\n", service.name());
    paragraph(out, &doc.leading(&[SERVICE, index]));
    let _ = writeln!(
        out,
        "| RPC | Request | Response | Kind |\n|---|---|---|---|"
    );
    for m in &service.method {
        let kind = match (m.client_streaming(), m.server_streaming()) {
            (false, false) => "unary",
            (false, true) => "server stream",
            (true, false) => "client stream",
            (true, true) => "bidirectional stream",
        };
        let _ = writeln!(
            out,
            "| [`{0}`](#{1}) | {2} | {3} | {kind} |",
            m.name(),
            m.name().to_lowercase(),
            type_link(m.input_type()),
            type_link(m.output_type()),
        );
    }
    out.push('\n');
    for (j, m) in service.method.iter().enumerate() {
        let stream = |yes: bool| if yes { "stream " } else { "" };
        let _ = writeln!(out, "### {}\n", m.name());
        let _ = writeln!(
            out,
            "`rpc {}({}{}) returns ({}{})`\n",
            m.name(),
            stream(m.client_streaming()),
            short(m.input_type()),
            stream(m.server_streaming()),
            short(m.output_type()),
        );
        paragraph(out, &doc.leading(&[SERVICE, index, CHILD, j as i32]));
    }
}

fn render_message(out: &mut String, doc: &Comments, index: i32, message: &DescriptorProto) {
    let _ = writeln!(out, "### {}\n", message.name());
    paragraph(out, &doc.leading(&[MESSAGE, index]));
    if message.field.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "| Field | Number | Type | Description |\n|---|---:|---|---|"
    );
    for (j, field) in message.field.iter().enumerate() {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            field.name(),
            field.number(),
            field_type(field),
            cell(&doc.leading(&[MESSAGE, index, CHILD, j as i32])),
        );
    }
    out.push('\n');
}

fn render_enum(out: &mut String, doc: &Comments, index: i32, e: &EnumDescriptorProto) {
    let _ = writeln!(out, "### {}\n", e.name());
    paragraph(out, &doc.leading(&[ENUM, index]));
    let _ = writeln!(out, "| Value | Number | Description |\n|---|---:|---|");
    for (j, value) in e.value.iter().enumerate() {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            value.name(),
            value.number(),
            cell(&doc.leading(&[ENUM, index, CHILD, j as i32])),
        );
    }
    out.push('\n');
}

fn field_type(field: &FieldDescriptorProto) -> String {
    let scalar = match field.r#type() {
        Type::Message | Type::Enum => type_link(field.type_name()),
        Type::Double => "`double`".into(),
        Type::Float => "`float`".into(),
        Type::Int64 => "`int64`".into(),
        Type::Uint64 => "`uint64`".into(),
        Type::Int32 => "`int32`".into(),
        Type::Fixed64 => "`fixed64`".into(),
        Type::Fixed32 => "`fixed32`".into(),
        Type::Bool => "`bool`".into(),
        Type::String => "`string`".into(),
        Type::Bytes => "`bytes`".into(),
        Type::Uint32 => "`uint32`".into(),
        Type::Sfixed32 => "`sfixed32`".into(),
        Type::Sfixed64 => "`sfixed64`".into(),
        Type::Sint32 => "`sint32`".into(),
        Type::Sint64 => "`sint64`".into(),
        Type::Group => "`group`".into(),
    };
    match field.label() {
        Label::Repeated => format!("repeated {scalar}"),
        _ if field.proto3_optional() => format!("optional {scalar}"),
        _ => scalar,
    }
}

/// `.user.v1.User` → a link to its section; well-known types → their name.
fn type_link(full: &str) -> String {
    match full.strip_prefix(".user.v1.") {
        Some(name) => format!("[`{name}`](#{})", name.to_lowercase()),
        None => format!("`{}`", full.trim_start_matches('.')),
    }
}

fn short(full: &str) -> &str {
    full.strip_prefix(".user.v1.")
        .unwrap_or_else(|| full.trim_start_matches('.'))
}

fn paragraph(out: &mut String, text: &str) {
    if !text.is_empty() {
        let _ = writeln!(out, "{text}\n");
    }
}

/// A comment inside a table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The comments protox kept in the file's source info, by element path.
struct Comments<'a>(&'a FileDescriptorProto);

impl Comments<'_> {
    fn leading(&self, path: &[i32]) -> String {
        self.0
            .source_code_info
            .iter()
            .flat_map(|info| &info.location)
            .find(|loc| loc.path == path)
            .map(|loc| tidy(loc.leading_comments()))
            .unwrap_or_default()
    }

    /// The comment block at the top of the file, above `syntax`.
    fn header(&self) -> String {
        self.0
            .source_code_info
            .iter()
            .flat_map(|info| &info.location)
            .find(|loc| loc.path == [12]) // FileDescriptorProto.syntax
            .map(|loc| {
                let detached = loc.leading_detached_comments.iter().map(String::as_str);
                detached
                    .chain(loc.leading_comments.as_deref())
                    .map(tidy)
                    .collect::<Vec<_>>()
                    .join("\n\n")
            })
            .unwrap_or_default()
    }
}

/// Proto comments keep the space after `//`; Markdown wants it gone.
fn tidy(comment: &str) -> String {
    comment
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}
