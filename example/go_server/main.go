// A Go net/http server that knows nothing of einhorn: systemd's conventions only
// (docs/servers.md). Standard library only; go-systemd's activation.Listeners()
// and daemon.SdNotify do the same.
//
//	go build -o server example/go_server/main.go
//	einhorn -n 4 -b 127.0.0.1:8000,r --listen-fds -m notify --graceful-signal TERM -- ./server
//
// Every GET gets one line: `pid=4242 version=1` (`version` is $APP_VERSION).
package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	// Socket activation (einhorn --listen-fds, or a systemd socket unit): fd 3, for this very process.
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) || os.Getenv("LISTEN_FDS") == "" {
		os.Stderr.WriteString("no socket passed: run me under einhorn --listen-fds or a systemd socket unit\n")
		os.Exit(2)
	}
	listener, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		panic(err)
	}
	version := os.Getenv("APP_VERSION")
	if version == "" {
		version = "1"
	}
	body := []byte("pid=" + strconv.Itoa(os.Getpid()) + " version=" + version + "\n")
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=ascii")
		w.Write(body)
	})}

	// Graceful stop on SIGTERM (einhorn --graceful-signal TERM): stop accepting, finish what is in flight.
	stopped := make(chan struct{})
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM)
		<-signals
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		server.Shutdown(ctx)
		close(stopped)
	}()

	// Ready (einhorn -m notify, or systemd Type=notify): one datagram to NOTIFY_SOCKET.
	if address := os.Getenv("NOTIFY_SOCKET"); address != "" {
		if address[0] == '@' {
			address = "\x00" + address[1:]
		}
		if conn, err := net.Dial("unixgram", address); err == nil {
			conn.Write([]byte("READY=1"))
			conn.Close()
		}
	}

	if err := server.Serve(listener); err != http.ErrServerClosed {
		panic(err)
	}
	<-stopped
}
