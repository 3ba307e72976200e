package conformance

// Task lifecycle with real guests: only on a Xen dom0 (-xen), where the pytest wrapper
// tests/xen/test_conformance.py runs this binary inside the testbed.

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/nomad/client/lib/cgutil"
	cstructs "github.com/hashicorp/nomad/client/structs"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/proto"
	"github.com/hashicorp/nomad/plugins/drivers/testutils"
	"google.golang.org/grpc/codes"
)

func needXen(t *testing.T) {
	t.Helper()
	if !*flagXen {
		t.Skip("needs -xen: runs inside the Xen testbed's dom0 (tests/xen/test_conformance.py)")
	}
}

// guest is one task started through Nomad's driver harness.
type guest struct {
	t       *testing.T
	drv     drivers.DriverPlugin // who to ask about it (changes after recovery)
	cfg     *drivers.TaskConfig
	handle  *drivers.TaskHandle
	domain  string
	console string // logmon's rotated stdout file of the task
}

// newHarness puts Nomad's driver harness in front of a plugin process: requests go
// harness client → in-memory gRPC → Nomad's Go server adapter → Nomad's client → our process,
// so every answer passes Nomad's converters twice.
func newHarness(t *testing.T, p *pluginProc) *testutils.DriverHarness {
	t.Helper()
	return testutils.NewDriverHarness(t, p.drv)
}

// startGuest starts a task of an example job, its config edited by edit, the way a task
// runner does: alloc dir with logmon on the stdout/stderr FIFOs, templates rendered into the
// task dir, config decoded with the driver's schema and the task's variables, StartTask.
func startGuest(t *testing.T, h *testutils.DriverHarness, ex exampleTask, name string, edit func(map[string]any)) *guest {
	t.Helper()
	needXen(t)
	config := map[string]any{}
	raw, _ := json.Marshal(ex.task.Config)
	if err := json.Unmarshal(raw, &config); err != nil {
		t.Fatal(err)
	}
	if *flagKernel != "" {
		config["kernel"] = *flagKernel
	}
	if edit != nil {
		edit(config)
	}
	cpu, mem := 100, 16
	if r := ex.task.Resources; r != nil {
		if r.CPU != nil {
			cpu = *r.CPU
		}
		if r.MemoryMB != nil {
			mem = *r.MemoryMB
		}
	}
	allocID := uuid.Generate()
	hostname, _ := os.Hostname()
	cfg := &drivers.TaskConfig{
		ID:            allocID + "/" + name + "/" + uuid.Short(),
		Name:          name,
		JobName:       *ex.job.Name,
		JobID:         *ex.job.ID,
		TaskGroupName: *ex.group.Name,
		Namespace:     "default",
		NodeName:      hostname,
		NodeID:        uuid.Generate(),
		AllocID:       allocID,
		Resources: &drivers.Resources{
			NomadResources: &structs.AllocatedTaskResources{
				Cpu:    structs.AllocatedCpuResources{CpuShares: int64(cpu)},
				Memory: structs.AllocatedMemoryResources{MemoryMB: int64(mem)},
			},
			LinuxResources: &drivers.LinuxResources{MemoryLimitBytes: int64(mem) << 20, CPUShares: int64(cpu)},
		},
	}
	t.Cleanup(h.MkAllocDir(cfg, true))
	t.Cleanup(func() { removeHarnessCgroup(t, cfg) })
	taskDir := cfg.TaskDir()
	for _, tmpl := range ex.task.Templates {
		if tmpl.EmbeddedTmpl == nil || tmpl.DestPath == nil {
			continue
		}
		dest := filepath.Join(taskDir.Dir, *tmpl.DestPath)
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dest, []byte(*tmpl.EmbeddedTmpl), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	task := &structs.Task{Name: name, Driver: driverName, Config: config}
	if _, errs := decodeTaskConfig(t, taskSpec(t, h), task, cfg); errs != nil {
		t.Fatalf("the client would refuse this config: %v", errs)
	}

	started := time.Now()
	var handle *drivers.TaskHandle
	var err error
	within(t, 3*time.Minute, "StartTask", func() { handle, _, err = h.StartTask(cfg) })
	if err != nil {
		t.Fatalf("StartTask(%s): %v", name, err)
	}
	g := &guest{t: t, drv: h, cfg: cfg, handle: handle,
		console: filepath.Join(taskDir.LogDir, name+".stdout.0")}
	t.Cleanup(g.cleanup)
	t.Logf("StartTask(%s) returned after %v", cfg.ID, time.Since(started).Round(time.Millisecond))

	if handle == nil || handle.Config == nil || handle.Config.ID != cfg.ID {
		t.Fatalf("StartTask handle %+v does not carry the task config (the client would start the task again on restore)", handle)
	}
	if handle.Version < 1 || handle.State != drivers.TaskStateRunning || len(handle.DriverState) == 0 {
		t.Fatalf("StartTask handle version %d state %q driver state %d bytes", handle.Version, handle.State, len(handle.DriverState))
	}
	st, err := h.InspectTask(cfg.ID)
	if err != nil {
		t.Fatalf("InspectTask after start: %v", err)
	}
	g.domain = st.DriverAttributes["domain_name"]
	if g.domain == "" {
		t.Fatalf("InspectTask does not name the task's domain (attributes %v)", st.DriverAttributes)
	}
	return g
}

// removeHarnessCgroup: on a cgroup v2 host, Nomad 1.6's harness makes an (empty) cgroup for
// every alloc dir, which its clean-up with log collection on does not remove.
func removeHarnessCgroup(t *testing.T, cfg *drivers.TaskConfig) {
	if !cgutil.UseV2 {
		return
	}
	slice := filepath.Join(cgutil.CgroupRoot, "testing.slice")
	dir := filepath.Join(slice, cgutil.CgroupScope(cfg.AllocID, cfg.Name))
	if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
		t.Errorf("removing the harness's cgroup %s: %v", dir, err)
	}
	_ = os.Remove(slice) // the harness's parent too, once no other test's cgroup is in it
}

// running: the task is running and its domain exists (for guests that do not end by themselves).
func (g *guest) running() {
	g.t.Helper()
	st, err := g.drv.InspectTask(g.cfg.ID)
	if err != nil || st.State != drivers.TaskStateRunning {
		g.t.Fatalf("InspectTask: %+v, %v; want running", st, err)
	}
	if !domainExists(g.domain) {
		g.t.Fatalf("task reported running, but there is no domain %s", g.domain)
	}
}

// cleanup: whatever a test left behind is destroyed (through the driver, else with xl).
func (g *guest) cleanup() {
	_ = g.drv.DestroyTask(g.cfg.ID, true)
	if g.domain != "" && domainExists(g.domain) {
		g.t.Logf("domain %s left behind; destroying it with xl", g.domain)
		_ = exec.Command(xl(), "destroy", g.domain).Run()
	}
}

func (g *guest) waitConsole(text string, timeout time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(g.console)
		if strings.Contains(string(data), text) {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%q not in the task's stdout log (%s) after %v; it has:\n%s", text, g.console, timeout, tail(string(data), 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (g *guest) consoleSize() int64 {
	st, err := os.Stat(g.console)
	if err != nil {
		return 0
	}
	return st.Size()
}

// waitExit: WaitTask's result within timeout.
func waitExit(t *testing.T, drv drivers.DriverPlugin, id string, timeout time.Duration) *drivers.ExitResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ch, err := drv.WaitTask(ctx, id)
	if err != nil {
		t.Fatalf("WaitTask: %v", err)
	}
	select {
	case res := <-ch:
		if res == nil {
			t.Fatal("WaitTask channel closed without a result")
		}
		return res
	case <-ctx.Done():
		t.Fatalf("WaitTask did not return within %v", timeout)
	}
	return nil
}

func wantExit(t *testing.T, got *drivers.ExitResult, code, signal int, errContains string) {
	t.Helper()
	if got.ExitCode != code || got.Signal != signal || got.OOMKilled {
		t.Errorf("exit result %+v, want exit code %d signal %d", got, code, signal)
	}
	switch {
	case errContains == "" && got.Err != nil:
		t.Errorf("exit result carries error %q, want none", got.Err)
	case errContains != "" && (got.Err == nil || !strings.Contains(got.Err.Error(), errContains)):
		t.Errorf("exit result error %v, want one mentioning %q", got.Err, errContains)
	}
}

func wantNotFound(t *testing.T, drv drivers.DriverPlugin, id string) {
	t.Helper()
	if st, err := drv.InspectTask(id); err == nil || !strings.Contains(err.Error(), taskNotFound) {
		t.Errorf("InspectTask after DestroyTask: %+v, %v; want %q", st, err, taskNotFound)
	}
}

func xl() string {
	if p, err := exec.LookPath("xl"); err == nil {
		return p
	}
	return "/usr/sbin/xl"
}

func domainExists(name string) bool {
	return exec.Command(xl(), "domid", name).Run() == nil
}

func waitDomainGone(t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for domainExists(name) {
		if time.Now().After(deadline) {
			t.Fatalf("domain %s still exists %v after the task exited", name, timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func setCmdline(cmdline string) func(map[string]any) {
	return func(c map[string]any) { c["cmdline"] = cmdline }
}

// ---- tests -------------------------------------------------------------------------------------

// TestXenLifecycle: nomad-jobs/clickos.nomad's task, start to destroy: StartTask → task event
// → InspectTask running → console in the log FIFO → TaskStats samples → StopTask → WaitTask
// (exit 0, SIGTERM) → InspectTask exited → DestroyTask → not found.
func TestXenLifecycle(t *testing.T) {
	needXen(t)
	p := sessionPlugin(t)
	h := newHarness(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, err := h.TaskEvents(ctx)
	if err != nil {
		t.Fatalf("TaskEvents: %v", err)
	}

	before := time.Now()
	g := startGuest(t, h, exampleTaskFrom(t, "clickos.nomad"), "firewall", nil)
	g.running()
	id := g.cfg.ID

	// The boot event reaches the task (routed by alloc id and task name).
	select {
	case ev := <-events:
		if ev == nil || ev.Err != nil {
			t.Fatalf("TaskEvents: %+v", ev)
		}
		if ev.TaskID != id || ev.AllocID != g.cfg.AllocID || ev.TaskName != g.cfg.Name {
			t.Errorf("event routed to task %q alloc %q name %q, want %q %q %q", ev.TaskID, ev.AllocID, ev.TaskName, id, g.cfg.AllocID, g.cfg.Name)
		}
		if !strings.Contains(ev.Message, "booted") || ev.Timestamp.Before(before.Add(-time.Minute)) {
			t.Errorf("boot event %q at %v", ev.Message, ev.Timestamp)
		}
		t.Logf("task event: %s %v", ev.Message, ev.Annotations)
	case <-time.After(10 * time.Second):
		t.Error("no task event for the started task")
	}

	st, err := h.InspectTask(id)
	if err != nil {
		t.Fatalf("InspectTask: %v", err)
	}
	if st.ID != id || st.Name != g.cfg.Name || st.State != drivers.TaskStateRunning {
		t.Errorf("InspectTask: id %q name %q state %q", st.ID, st.Name, st.State)
	}
	if st.StartedAt.Before(before.Add(-time.Minute)) || st.StartedAt.After(time.Now()) {
		t.Errorf("started at %v, the task was started at %v", st.StartedAt, before)
	}
	if err := h.WaitUntilStarted(id, 5*time.Second); err != nil {
		t.Errorf("harness WaitUntilStarted: %v", err)
	}

	// The guest console arrives through Nomad's log FIFO, including the Click config echo.
	g.waitConsole("NDX-GUEST READY", 30*time.Second)
	g.waitConsole("config_len=", 30*time.Second)

	// Stats: samples with increasing, plausible timestamps and real memory figures; CPU usage is
	// a rate, so the first sample may not have it, later ones must.
	const wantSamples = 3
	sctx, scancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer scancel()
	stats, err := h.TaskStats(sctx, id, time.Second)
	if err != nil {
		t.Fatalf("TaskStats: %v", err)
	}
	var samples []*cstructs.TaskResourceUsage
	for len(samples) < wantSamples {
		select {
		case s, ok := <-stats:
			if !ok {
				t.Fatalf("TaskStats stream ended after %d samples", len(samples))
			}
			samples = append(samples, s)
		case <-sctx.Done():
			t.Fatalf("%d TaskStats samples in 45 s, want %d", len(samples), wantSamples)
		}
	}
	scancel()
	cpuMeasured := 0
	for i, s := range samples {
		ts := time.Unix(0, s.Timestamp)
		if s.Timestamp == 0 || ts.Before(before.Add(-time.Minute)) || ts.After(time.Now().Add(time.Minute)) {
			t.Errorf("sample %d timestamp %v is not a time around now", i, ts)
		}
		if i > 0 && s.Timestamp <= samples[i-1].Timestamp {
			t.Errorf("sample timestamps do not increase: %d then %d", samples[i-1].Timestamp, s.Timestamp)
		}
		ru := s.ResourceUsage
		if ru == nil || ru.MemoryStats == nil || ru.CpuStats == nil {
			t.Fatalf("sample %d lacks memory/cpu usage: %+v", i, s)
		}
		t.Logf("sample %d at %s: memory %+v cpu %+v", i, ts.Format(time.RFC3339Nano), *ru.MemoryStats, *ru.CpuStats)
		if ru.MemoryStats.RSS == 0 || !slices.Contains(ru.MemoryStats.Measured, "RSS") {
			t.Errorf("sample %d: no measured guest memory", i)
		}
		if slices.Contains(ru.CpuStats.Measured, "Percent") {
			cpuMeasured++
			if ru.CpuStats.Percent < 0 || ru.CpuStats.Percent > 100*128 {
				t.Errorf("sample %d: cpu percent %v", i, ru.CpuStats.Percent)
			}
		}
	}
	if cpuMeasured < wantSamples-1 {
		t.Errorf("CPU usage measured in %d of %d samples, want all but the first", cpuMeasured, wantSamples)
	}

	// Stop → Wait → Inspect → Destroy → gone.
	stopped := time.Now()
	within(t, 40*time.Second, "StopTask", func() {
		if err := h.StopTask(id, 10*time.Second, "SIGTERM"); err != nil {
			t.Errorf("StopTask: %v", err)
		}
	})
	res := waitExit(t, h, id, 30*time.Second)
	t.Logf("stopped in %v: %+v", time.Since(stopped).Round(time.Millisecond), res)
	wantExit(t, res, 0, int(syscall.SIGTERM), "")
	waitDomainGone(t, g.domain, 15*time.Second)

	st, err = h.InspectTask(id)
	if err != nil {
		t.Fatalf("InspectTask after exit: %v", err)
	}
	if st.State != drivers.TaskStateExited || st.ExitResult == nil || st.ExitResult.ExitCode != res.ExitCode || st.ExitResult.Signal != res.Signal {
		t.Errorf("InspectTask after exit: state %q result %+v, WaitTask said %+v", st.State, st.ExitResult, res)
	}
	if st.CompletedAt.Before(st.StartedAt) {
		t.Errorf("completed at %v, before started at %v", st.CompletedAt, st.StartedAt)
	}
	if err := h.DestroyTask(id, false); err != nil {
		t.Fatalf("DestroyTask of an exited task: %v", err)
	}
	wantNotFound(t, h, id)
	if res := waitExit(t, h, id, 10*time.Second); res.Err == nil || !strings.Contains(res.Err.Error(), taskNotFound) {
		t.Errorf("WaitTask after DestroyTask: %+v, want %q", res, taskNotFound)
	}
}

// TestXenSelfTerminatingGuest: nomad-jobs/minios.nomad's batch guest powers itself off
// (exit 0, no signal); the same guest told to crash fails with exit code 1 and a reason.
func TestXenSelfTerminatingGuest(t *testing.T) {
	needXen(t)
	p := sessionPlugin(t)
	ex := exampleTaskFrom(t, "minios.nomad")
	for _, tc := range []struct {
		name, cmdline string
		code          int
		err           string
	}{
		{"poweroff", "", 0, ""},
		{"crash", "tick=1 crash_after=1", 1, "crash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, p) // one per task: the alloc dir's clean-up closes the harness
			var edit func(map[string]any)
			if tc.cmdline != "" {
				edit = setCmdline(tc.cmdline)
			}
			g := startGuest(t, h, ex, "compute", edit)
			res := waitExit(t, h, g.cfg.ID, 60*time.Second)
			t.Logf("exit: %+v", res)
			wantExit(t, res, tc.code, 0, tc.err)
			st, err := h.InspectTask(g.cfg.ID)
			if err != nil || st.State != drivers.TaskStateExited {
				t.Errorf("InspectTask after exit: %+v, %v", st, err)
			}
			if err := h.DestroyTask(g.cfg.ID, false); err != nil {
				t.Errorf("DestroyTask: %v", err)
			}
			waitDomainGone(t, g.domain, 15*time.Second)
			wantNotFound(t, h, g.cfg.ID)
		})
	}
}

// TestXenStopTaskForcesStubbornGuest: a guest that ignores the shutdown request is destroyed
// when StopTask's timeout runs out, and WaitTask reports SIGKILL.
func TestXenStopTaskForcesStubbornGuest(t *testing.T) {
	needXen(t)
	p := sessionPlugin(t)
	h := newHarness(t, p)
	g := startGuest(t, h, exampleTaskFrom(t, "minios.nomad"), "stubborn", setCmdline("tick=1 ignore_shutdown"))
	g.running()
	const timeout = 3 * time.Second
	started := time.Now()
	within(t, timeout+30*time.Second, "StopTask", func() {
		if err := h.StopTask(g.cfg.ID, timeout, "SIGTERM"); err != nil {
			t.Errorf("StopTask: %v", err)
		}
	})
	took := time.Since(started)
	if took < timeout {
		t.Errorf("StopTask returned after %v, before its %v timeout", took, timeout)
	}
	g.waitConsole("ignoring shutdown request", 10*time.Second)
	wantExit(t, waitExit(t, h, g.cfg.ID, 20*time.Second), 0, int(syscall.SIGKILL), "")
	waitDomainGone(t, g.domain, 15*time.Second)
	if err := h.DestroyTask(g.cfg.ID, true); err != nil {
		t.Errorf("DestroyTask: %v", err)
	}
}

// TestXenSignalTask: signals a PV guest cannot receive are refused as unimplemented (the task
// keeps running); SIGTERM asks the guest to shut down, which it does (exit 0).
func TestXenSignalTask(t *testing.T) {
	needXen(t)
	p := sessionPlugin(t)
	h := newHarness(t, p)
	g := startGuest(t, h, exampleTaskFrom(t, "minios.nomad"), "signals", setCmdline("tick=1"))
	g.running()
	for _, sig := range []string{"SIGHUP", "SIGUSR1", "SIGKILL"} {
		err := p.drv.SignalTask(g.cfg.ID, sig)
		st := wantCode(t, err, codes.Unimplemented, "SignalTask("+sig+")")
		if !strings.Contains(st.Message(), sig) || !strings.Contains(st.Message(), "SIGTERM") {
			t.Errorf("SignalTask(%s): message %q does not name the signal and what is supported", sig, st.Message())
		}
		if err := h.SignalTask(g.cfg.ID, sig); err == nil {
			t.Errorf("SignalTask(%s) through the harness: no error", sig)
		}
	}
	if st, err := h.InspectTask(g.cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("after refused signals the task is %+v (%v), want running", st, err)
	}
	if err := h.SignalTask(g.cfg.ID, "SIGTERM"); err != nil {
		t.Fatalf("SignalTask(SIGTERM): %v", err)
	}
	wantExit(t, waitExit(t, h, g.cfg.ID, 30*time.Second), 0, 0, "")
	g.waitConsole("NDX-GUEST poweroff", 10*time.Second)
	if err := h.DestroyTask(g.cfg.ID, false); err != nil {
		t.Errorf("DestroyTask: %v", err)
	}
}

// TestXenConcurrentWaitTask: many WaitTask calls on one task (through the harness and on the
// wire) block while it runs and all return the same result when it stops; WaitTask on the
// exited task returns at once. DestroyTask without force refuses a running task.
func TestXenConcurrentWaitTask(t *testing.T) {
	needXen(t)
	p := sessionPlugin(t)
	h := newHarness(t, p)
	raw := p.raw(t)
	g := startGuest(t, h, exampleTaskFrom(t, "minios.nomad"), "waiters", setCmdline("tick=1"))
	g.running()
	id := g.cfg.ID

	if err := h.DestroyTask(id, false); err == nil {
		t.Error("DestroyTask(force=false) of a running task succeeded")
	}
	if st, err := h.InspectTask(id); err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("after DestroyTask(force=false) the task is %+v (%v)", st, err)
	}

	const harnessWaiters, wireWaiters = 8, 2
	type result struct {
		who string
		res *drivers.ExitResult
		at  time.Time
	}
	results := make(chan result, harnessWaiters+wireWaiters)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < harnessWaiters; i++ {
		ch, err := h.WaitTask(ctx, id)
		if err != nil {
			t.Fatalf("WaitTask: %v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- result{"harness", <-ch, time.Now()}
		}()
	}
	for i := 0; i < wireWaiters; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := raw.WaitTask(ctx, &proto.WaitTaskRequest{TaskId: id})
			r := &drivers.ExitResult{}
			if err != nil {
				r.Err = err
			} else if resp.Result != nil {
				r.ExitCode, r.Signal = int(resp.Result.ExitCode), int(resp.Result.Signal)
			}
			results <- result{"wire", r, time.Now()}
		}()
	}
	time.Sleep(2 * time.Second)
	if n := len(results); n != 0 {
		t.Fatalf("%d WaitTask calls returned while the task runs: %+v", n, (<-results).res)
	}

	stopAt := time.Now()
	if err := h.StopTask(id, 10*time.Second, "SIGINT"); err != nil {
		t.Fatalf("StopTask: %v", err)
	}
	wg.Wait()
	close(results)
	n := 0
	for r := range results {
		n++
		if r.at.Before(stopAt) {
			t.Errorf("%s waiter returned before StopTask", r.who)
		}
		wantExit(t, r.res, 0, int(syscall.SIGINT), "")
	}
	if n != harnessWaiters+wireWaiters {
		t.Errorf("%d of %d WaitTask calls returned", n, harnessWaiters+wireWaiters)
	}
	again := time.Now()
	wantExit(t, waitExit(t, h, id, 5*time.Second), 0, int(syscall.SIGINT), "")
	t.Logf("WaitTask on the exited task returned in %v", time.Since(again).Round(time.Millisecond))
	if err := h.DestroyTask(id, false); err != nil {
		t.Errorf("DestroyTask: %v", err)
	}
}

// TestXenRecoverTaskAfterPluginCrash: the plugin process is SIGKILLed under a running guest;
// a new process recovers the task from the handle StartTask returned (as the client does from
// its state DB): same domain, running, console streaming resumes, and stop/wait/destroy work.
func TestXenRecoverTaskAfterPluginCrash(t *testing.T) {
	needXen(t)
	first := startPlugin(t, sessionConfig(t, nil))
	h := newHarness(t, first)
	g := startGuest(t, h, exampleTaskFrom(t, "minios.nomad"), "survivor", setCmdline("tick=1"))
	g.running()
	g.waitConsole("tick 1", 30*time.Second)

	first.crash(t)
	if !domainExists(g.domain) {
		t.Fatalf("domain %s went away with the plugin", g.domain)
	}
	time.Sleep(2 * time.Second)

	second := startPlugin(t, sessionConfig(t, nil))
	g.drv = second.drv
	sizeAtRecovery := g.consoleSize()
	if err := second.drv.RecoverTask(g.handle); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	if err := second.drv.RecoverTask(g.handle); err != nil {
		t.Errorf("RecoverTask again (must be idempotent): %v", err)
	}
	st, err := second.drv.InspectTask(g.cfg.ID)
	if err != nil {
		t.Fatalf("InspectTask after recovery: %v", err)
	}
	if st.State != drivers.TaskStateRunning || st.DriverAttributes["domain_name"] != g.domain {
		t.Errorf("recovered task: state %q domain %q, want running %q", st.State, st.DriverAttributes["domain_name"], g.domain)
	}
	deadline := time.Now().Add(15 * time.Second)
	for g.consoleSize() <= sizeAtRecovery {
		if time.Now().After(deadline) {
			t.Fatalf("the console log did not grow after recovery (%d bytes)", sizeAtRecovery)
		}
		time.Sleep(250 * time.Millisecond)
	}

	if err := second.drv.StopTask(g.cfg.ID, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatalf("StopTask after recovery: %v", err)
	}
	wantExit(t, waitExit(t, second.drv, g.cfg.ID, 30*time.Second), 0, int(syscall.SIGTERM), "")
	if err := second.drv.DestroyTask(g.cfg.ID, false); err != nil {
		t.Errorf("DestroyTask: %v", err)
	}
	waitDomainGone(t, g.domain, 15*time.Second)
	wantNotFound(t, second.drv, g.cfg.ID)
}

// TestXenShutdownLeavesGuestsRunning: the agent stopping the plugin (go-plugin Kill) ends the
// process within 2 s and leaves the guest running; the next process recovers it.
func TestXenShutdownLeavesGuestsRunning(t *testing.T) {
	needXen(t)
	first := startPlugin(t, sessionConfig(t, nil))
	h := newHarness(t, first)
	g := startGuest(t, h, exampleTaskFrom(t, "minios.nomad"), "bystander", setCmdline("tick=1"))
	g.running()

	shutdownWithin2s(t, first)
	time.Sleep(3 * time.Second)
	out, err := exec.Command(xl(), "list", g.domain).CombinedOutput()
	if err != nil {
		t.Fatalf("guest %s is gone after the plugin stopped: %v\n%s", g.domain, err, out)
	}
	t.Logf("after plugin shutdown:\n%s", out)

	second := startPlugin(t, sessionConfig(t, nil))
	g.drv = second.drv
	if err := second.drv.RecoverTask(g.handle); err != nil {
		t.Fatalf("RecoverTask: %v", err)
	}
	if st, err := second.drv.InspectTask(g.cfg.ID); err != nil || st.State != drivers.TaskStateRunning {
		t.Fatalf("recovered task: %+v, %v", st, err)
	}
	if err := second.drv.StopTask(g.cfg.ID, 10*time.Second, "SIGTERM"); err != nil {
		t.Fatalf("StopTask: %v", err)
	}
	wantExit(t, waitExit(t, second.drv, g.cfg.ID, 30*time.Second), 0, int(syscall.SIGTERM), "")
	if err := second.drv.DestroyTask(g.cfg.ID, false); err != nil {
		t.Errorf("DestroyTask: %v", err)
	}
	waitDomainGone(t, g.domain, 15*time.Second)
}
