package conformance

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const taskNotFound = "task not found for given id"

// TestUnknownTaskIDs: every task RPC given an id the plugin does not know answers with an
// error, at once: no hang, no crash, no "internal" error. Checked on the wire (status codes)
// and through Nomad's driver client (what the task runner sees).
func TestUnknownTaskIDs(t *testing.T) {
	p := sessionPlugin(t)
	mark := p.logs.Len()
	raw := p.raw(t)
	ids := map[string]string{
		"unknown": uuid.Generate() + "/web/" + uuid.Short(), // shaped like the ids Nomad makes
		"empty":   "",
	}
	for label, id := range ids {
		notFound := func(t *testing.T, err error, rpc string) {
			t.Helper()
			st := wantCode(t, err, codes.NotFound, rpc)
			if st.Message() != taskNotFound {
				t.Errorf("%s: message %q, want %q", rpc, st.Message(), taskNotFound)
			}
		}
		call := func(name string, fn func(t *testing.T, ctx context.Context)) {
			t.Run(label+"/"+name, func(t *testing.T) {
				ctx := ctxTimeout(t, 10*time.Second)
				within(t, 15*time.Second, name, func() { fn(t, ctx) })
			})
		}
		call("WaitTask", func(t *testing.T, ctx context.Context) {
			_, err := raw.WaitTask(ctx, &proto.WaitTaskRequest{TaskId: id})
			notFound(t, err, "WaitTask")
		})
		call("StopTask", func(t *testing.T, ctx context.Context) {
			_, err := raw.StopTask(ctx, &proto.StopTaskRequest{TaskId: id, Signal: "SIGTERM"})
			notFound(t, err, "StopTask")
		})
		call("DestroyTask", func(t *testing.T, ctx context.Context) {
			_, err := raw.DestroyTask(ctx, &proto.DestroyTaskRequest{TaskId: id})
			notFound(t, err, "DestroyTask")
			_, err = raw.DestroyTask(ctx, &proto.DestroyTaskRequest{TaskId: id, Force: true})
			notFound(t, err, "DestroyTask(force)")
		})
		call("InspectTask", func(t *testing.T, ctx context.Context) {
			_, err := raw.InspectTask(ctx, &proto.InspectTaskRequest{TaskId: id})
			notFound(t, err, "InspectTask")
		})
		call("TaskStats", func(t *testing.T, ctx context.Context) {
			stream, err := raw.TaskStats(ctx, &proto.TaskStatsRequest{TaskId: id})
			if err == nil {
				_, err = stream.Recv()
			}
			notFound(t, err, "TaskStats")
			// Final, so Nomad's stats hook stops instead of retrying forever.
			if rec, ok := recoverableDetail(err); !ok || rec {
				t.Errorf("TaskStats: want a RecoverableError{recoverable=false} detail, got present=%v recoverable=%v", ok, rec)
			}
		})
		call("SignalTask", func(t *testing.T, ctx context.Context) {
			_, err := raw.SignalTask(ctx, &proto.SignalTaskRequest{TaskId: id, Signal: "SIGTERM"})
			notFound(t, err, "SignalTask")
		})
		call("ExecTask", func(t *testing.T, ctx context.Context) {
			_, err := raw.ExecTask(ctx, &proto.ExecTaskRequest{TaskId: id, Command: []string{"/bin/true"}})
			wantCode(t, err, codes.Unimplemented, "ExecTask")
		})
		call("ExecTaskStreaming", func(t *testing.T, ctx context.Context) {
			stream, err := raw.ExecTaskStreaming(ctx)
			if err == nil {
				_ = stream.Send(&proto.ExecTaskStreamingRequest{Setup: &proto.ExecTaskStreamingRequest_Setup{TaskId: id, Command: []string{"/bin/sh"}}})
				_, err = stream.Recv()
			}
			wantCode(t, err, codes.Unimplemented, "ExecTaskStreaming")
		})
		call("RecoverTask", func(t *testing.T, ctx context.Context) {
			_, err := raw.RecoverTask(ctx, &proto.RecoverTaskRequest{TaskId: id, Handle: &proto.TaskHandle{
				Version: 1, Config: &proto.TaskConfig{Id: id}, State: proto.TaskState_RUNNING, DriverState: []byte("not our state"),
			}})
			notInternal(t, err, "RecoverTask(foreign driver state)")
			_, err = raw.RecoverTask(ctx, &proto.RecoverTaskRequest{TaskId: id})
			notInternal(t, err, "RecoverTask(no handle)")
		})

		// What Nomad's task runner gets back through its own client.
		t.Run(label+"/nomad client", func(t *testing.T) {
			within(t, 30*time.Second, "the driver client calls", func() {
				ctx := ctxTimeout(t, 10*time.Second)
				ch, err := p.drv.WaitTask(ctx, id)
				if err != nil {
					t.Errorf("WaitTask: %v", err)
				} else if res := <-ch; res == nil || res.Err == nil || !strings.Contains(res.Err.Error(), taskNotFound) {
					t.Errorf("WaitTask result %+v, want an error saying %q", res, taskNotFound)
				}
				if err := p.drv.StopTask(id, time.Second, "SIGTERM"); err == nil {
					t.Error("StopTask: no error")
				}
				if err := p.drv.DestroyTask(id, true); err == nil {
					t.Error("DestroyTask: no error")
				}
				if st, err := p.drv.InspectTask(id); err == nil {
					t.Errorf("InspectTask: no error (%+v)", st)
				}
				if err := p.drv.SignalTask(id, "SIGHUP"); err == nil {
					t.Error("SignalTask: no error")
				}
				stats, err := p.drv.TaskStats(ctx, id, time.Second)
				if err == nil {
					if s, ok := <-stats; ok {
						t.Errorf("TaskStats delivered %+v", s)
					}
				}
				h := &drivers.TaskHandle{Version: 1, Config: &drivers.TaskConfig{ID: id}, State: drivers.TaskStateRunning, DriverState: []byte("x")}
				if err := p.drv.RecoverTask(h); err == nil {
					t.Error("RecoverTask with foreign driver state: no error")
				}
			})
		})
	}
	p.alive(t)
	if logs := p.logs.Since(mark); strings.Contains(logs, "rpc failed") {
		t.Errorf("the plugin logged an unexpected failure:\n%s", grepLines(logs, "rpc failed"))
	}
}

func notInternal(t *testing.T, err error, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error", what)
	}
	switch c := status.Code(err); c {
	case codes.Internal, codes.Unknown, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		t.Fatalf("%s: %v (%s is a crash, a hang or an unhandled exception, not an answer)", what, err, c)
	}
}

func recoverableDetail(err error) (recoverable bool, present bool) {
	st, ok := status.FromError(err)
	if !ok {
		return false, false
	}
	for _, d := range st.Details() {
		if rec, ok := d.(interface{ GetRecoverable() bool }); ok {
			return rec.GetRecoverable(), true
		}
	}
	return false, false
}

func grepLines(text, needle string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, needle) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestShutdownExitsPromptly: go-plugin's Kill (GRPCController.Shutdown, then up to 2 s for the
// process to exit, then SIGKILL) ends the plugin gracefully, well within the 2 s, even with the
// Fingerprint and TaskEvents streams open as in a running agent.
func TestShutdownExitsPromptly(t *testing.T) {
	p := startPlugin(t, sessionConfig(t, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fps, err := p.drv.Fingerprint(ctx)
	if err != nil {
		t.Fatalf("Fingerprint: %v", err)
	}
	<-fps
	if _, err := p.drv.TaskEvents(ctx); err != nil {
		t.Fatalf("TaskEvents: %v", err)
	}
	shutdownWithin2s(t, p)
}

// shutdownWithin2s kills the plugin the way the agent does and checks that it went gracefully.
func shutdownWithin2s(t *testing.T, p *pluginProc) time.Duration {
	t.Helper()
	started := time.Now()
	p.inst.Kill()
	took := time.Since(started)
	t.Logf("plugin %d stopped %v after Shutdown", p.pid, took.Round(time.Millisecond))
	logs := p.logs.String()
	if strings.Contains(logs, "plugin failed to exit gracefully") {
		t.Errorf("go-plugin had to SIGKILL the plugin (%v)", took)
	}
	if took >= 2*time.Second {
		t.Errorf("Kill took %v, the agent gives 2 s", took)
	}
	if !processGone(p.pid) {
		t.Errorf("process %d still exists", p.pid)
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, "plugin process exited") && strings.Contains(line, "error=") {
			t.Errorf("plugin exited unsuccessfully: %s", line)
		}
	}
	return took
}
