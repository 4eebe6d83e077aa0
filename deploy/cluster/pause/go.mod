module user-service.local/pause

go 1.21
