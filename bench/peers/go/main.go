// A grpc-go server of user.v1.UserService for the benchmark: GetUser and
// ListUsers over a map loaded from the harness's seed file, nothing else
// (no interceptors, no logging per call), as a plain grpc-go service is
// usually written.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"log"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "userpeer/gen/user/v1"
)

type seedUser struct {
	ID     string   `json:"id"`
	Email  string   `json:"email"`
	Name   string   `json:"name"`
	Status string   `json:"status"`
	Roles  []string `json:"roles"`
}

type server struct {
	pb.UnimplementedUserServiceServer
	mu      sync.RWMutex
	byID    map[string]*pb.User
	ordered []*pb.User // sorted by id, for ListUsers paging
}

func (s *server) GetUser(_ context.Context, req *pb.GetUserRequest) (*pb.User, error) {
	s.mu.RLock()
	u, ok := s.byID[req.GetUserId()]
	s.mu.RUnlock()
	if !ok {
		return nil, status.Error(codes.NotFound, "user not found")
	}
	return u, nil
}

func (s *server) ListUsers(req *pb.ListUsersRequest, stream grpc.ServerStreamingServer[pb.User]) error {
	if req.GetPageSize() < 0 {
		return status.Error(codes.InvalidArgument, "page_size must not be negative")
	}
	s.mu.RLock()
	users := s.ordered
	s.mu.RUnlock()
	start := 0
	if tok := req.GetPageToken(); tok != "" {
		start = sort.Search(len(users), func(i int) bool { return users[i].GetId() > tok })
	}
	end := len(users)
	if n := int(req.GetPageSize()); n > 0 && start+n < end {
		end = start + n
	}
	for _, u := range users[start:end] {
		if err := stream.Send(u); err != nil {
			return err
		}
	}
	return nil
}

func load(path string) (*server, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := &server{byID: map[string]*pb.User{}}
	now := timestamppb.New(time.Now())
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var su seedUser
		if err := json.Unmarshal(sc.Bytes(), &su); err != nil {
			return nil, err
		}
		st := pb.UserStatus_USER_STATUS_ACTIVE
		if su.Status == "inactive" {
			st = pb.UserStatus_USER_STATUS_INACTIVE
		}
		roles := su.Roles
		if len(roles) == 0 {
			roles = []string{"user"}
		}
		u := &pb.User{Id: su.ID, Email: su.Email, Name: su.Name, Status: st, CreatedAt: now, UpdatedAt: now, Roles: roles}
		s.byID[u.Id] = u
		s.ordered = append(s.ordered, u)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.Slice(s.ordered, func(i, j int) bool { return s.ordered[i].GetId() < s.ordered[j].GetId() })
	return s, nil
}

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "listen address")
	seed := flag.String("seed", "", "JSON Lines seed file")
	flag.Parse()
	s := &server{byID: map[string]*pb.User{}}
	if *seed != "" {
		var err error
		if s, err = load(*seed); err != nil {
			log.Fatalf("seed %s: %v", *seed, err)
		}
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	g := grpc.NewServer()
	pb.RegisterUserServiceServer(g, s)
	if err := g.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
