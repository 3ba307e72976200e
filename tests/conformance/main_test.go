package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	"github.com/hashicorp/nomad/helper/pluginutils/loader"
	"github.com/hashicorp/nomad/nomad/structs/config"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/proto"
	nomadversion "github.com/hashicorp/nomad/version"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// What the suite is pointed at. The pytest wrappers (tests/nomad/test_conformance_host.py and
// tests/xen/test_conformance.py) pass these; see README.md.
var (
	flagPlugin       = flag.String("plugin", "", "launcher written by `nomad-driver-xen install` (its directory is used as the agent's plugin_dir, its file name as the plugin block label)")
	flagRepo         = flag.String("repo", "", "checkout of the repository (nomad-jobs/*.nomad are read from it)")
	flagNomadVersion = flag.String("nomad-version", "", "Nomad version pinned in tools/nomad/VERSION; must be the version this binary links")
	flagPluginConfig = flag.String("plugin-config", "{}", "JSON object: the agent's `plugin { config {} }` block the tests run the plugin with")
	flagExpectHealth = flag.String("expect-health", "any", "health the first fingerprint must report: undetected, unhealthy, healthy or any")
	flagXen          = flag.Bool("xen", false, "this is a Xen dom0: run the TestXen* lifecycle tests with real guests")
	flagKernel       = flag.String("kernel", "", "PV kernel for the lifecycle tests (default: the one the example jobs name)")
	flagLogDir       = flag.String("log-dir", "", "also write every go-plugin/loader/plugin log to files in this directory, as it happens")
)

// The driver name jobs use (driver = "xen") and the node attribute prefix.
const driverName = "xen"

func TestMain(m *testing.M) {
	flag.Parse()
	// Nomad's test logger (used inside its driver harness) writes TRACE to stderr by default.
	if os.Getenv("NOMAD_TEST_LOG_LEVEL") == "" {
		os.Setenv("NOMAD_TEST_LOG_LEVEL", "WARN")
	}
	code := m.Run()
	if session.p != nil {
		session.p.inst.Kill()
	}
	os.Exit(code)
}

// TestBuiltAgainstPinnedNomad: the Nomad code this binary runs our plugin through is the
// release tools/nomad/VERSION pins (the version the agent in our tests is built from). Test
// binaries carry no module list, so this asks the linked Nomad source itself.
func TestBuiltAgainstPinnedNomad(t *testing.T) {
	if *flagNomadVersion == "" {
		t.Fatal("pass -nomad-version (the content of tools/nomad/VERSION)")
	}
	linked := nomadversion.Version
	if nomadversion.VersionPrerelease != "" {
		linked += "-" + nomadversion.VersionPrerelease
	}
	t.Logf("linked Nomad %s", linked)
	if want := strings.TrimSpace(*flagNomadVersion); linked != want {
		t.Fatalf("linked Nomad %s, tools/nomad/VERSION pins %s (run tests/conformance/pin.sh)", linked, want)
	}
}

// ---- logging ---------------------------------------------------------------------------------

// logSink collects what go-plugin, Nomad's loader and our plugin (its stderr) log, so tests can
// assert on it; it is printed when the test fails.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *logSink) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Len()
}

// Since: what was logged after Len() returned mark.
func (s *logSink) Since(mark int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.buf.Bytes()[mark:])
}

// logOutput: the sink, and with -log-dir also the file <dir>/<file>.log.
func logOutput(sink *logSink, file string) (io.Writer, func()) {
	if *flagLogDir == "" {
		return sink, func() {}
	}
	_ = os.MkdirAll(*flagLogDir, 0o755)
	name := strings.NewReplacer("/", "_", " ", "_").Replace(file) + ".log"
	f, err := os.OpenFile(filepath.Join(*flagLogDir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return sink, func() {}
	}
	return io.MultiWriter(sink, f), func() { _ = f.Close() }
}

func testLogger(t *testing.T, name string) (hclog.Logger, *logSink) {
	t.Helper()
	sink := &logSink{}
	out, closeFile := logOutput(sink, t.Name()+"-"+name)
	t.Cleanup(closeFile)
	logger := hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Trace, Output: out})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last log lines of %s:\n%s", name, tail(sink.String(), 200))
		}
	})
	return logger, sink
}

// ---- launching the plugin the way the agent does ---------------------------------------------

func launcherPath() (dir, name string, err error) {
	if *flagPlugin == "" {
		return "", "", errors.New("pass -plugin (a launcher written by `nomad-driver-xen install`)")
	}
	path, err := filepath.Abs(*flagPlugin)
	if err != nil {
		return "", "", err
	}
	if st, err := os.Stat(path); err != nil || st.Mode()&0o111 == 0 {
		return "", "", fmt.Errorf("-plugin %s is not an executable file (%v)", path, err)
	}
	return filepath.Dir(path), filepath.Base(path), nil
}

func launcher(t *testing.T) (dir, name string) {
	t.Helper()
	dir, name, err := launcherPath()
	if err != nil {
		t.Fatal(err)
	}
	return dir, name
}

// defaultFingerprintPeriod: unless -plugin-config sets one, the tests' plugins re-fingerprint
// this often, so that TestFingerprint sees periodic updates within its 10 s.
const defaultFingerprintPeriod = 5 * time.Second

// pluginConfig is the plugin config block given with -plugin-config, with overrides.
func pluginConfig(overrides map[string]any) (map[string]any, error) {
	cfg := map[string]any{}
	if err := json.Unmarshal([]byte(*flagPluginConfig), &cfg); err != nil {
		return nil, fmt.Errorf("-plugin-config is not a JSON object: %v", err)
	}
	if _, set := cfg["fingerprint_period"]; !set {
		cfg["fingerprint_period"] = defaultFingerprintPeriod.String()
	}
	for k, v := range overrides {
		cfg[k] = v
	}
	return cfg, nil
}

func sessionConfig(t *testing.T, overrides map[string]any) map[string]any {
	t.Helper()
	cfg, err := pluginConfig(overrides)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// buildLoader runs Nomad's plugin loader over the launcher's directory, with `plugin "<launcher>"
// { config = cfg }` (cfg nil: a plugin block without config). This is what the agent does at
// start: one process for PluginInfo/ConfigSchema, one that validates the config with SetConfig.
func buildLoader(cfg map[string]any, logger hclog.Logger) (*loader.PluginLoader, error) {
	dir, name, err := launcherPath()
	if err != nil {
		return nil, err
	}
	return loader.NewPluginLoader(&loader.PluginLoaderConfig{
		Logger:            logger,
		PluginDir:         dir,
		Configs:           []*config.PluginConfig{{Name: name, Config: cfg}},
		SupportedVersions: loader.AgentSupportedApiVersions,
	})
}

// newLoader: a fresh loader, for the tests of loading itself.
func newLoader(t *testing.T, cfg map[string]any, logger hclog.Logger) (*loader.PluginLoader, error) {
	t.Helper()
	launcher(t)
	return buildLoader(cfg, logger)
}

// Loaders shared by the tests, one per distinct config, as one agent start: every process the
// tests then dispense is a fresh plugin process configured with SetConfig, as the driver
// manager launches after a crash. (Each loader costs two plugin launches, which in the
// emulated Xen testbed take tens of seconds.)
var shared = struct {
	sync.Mutex
	loaders map[string]*loader.PluginLoader
	logs    *logSink
	logger  hclog.Logger
}{loaders: map[string]*loader.PluginLoader{}, logs: &logSink{}}

func sharedLoader(cfg map[string]any) (*loader.PluginLoader, error) {
	key, _ := json.Marshal(cfg)
	shared.Lock()
	defer shared.Unlock()
	if l, ok := shared.loaders[string(key)]; ok {
		return l, nil
	}
	if shared.logger == nil {
		out, _ := logOutput(shared.logs, "shared-loader")
		shared.logger = hclog.New(&hclog.LoggerOptions{Name: "loader", Level: hclog.Trace, Output: out})
	}
	l, err := buildLoader(cfg, shared.logger)
	if err != nil {
		return nil, fmt.Errorf("Nomad's plugin loader refused the plugin: %v\n%s", err, tail(shared.logs.String(), 60))
	}
	shared.loaders[string(key)] = l
	return l, nil
}

// agentConfig is what a client agent sends with SetConfig in the long-lived plugin process:
// the client's port range (Nomad 1.6 has no CPU topology in it; later agents add one, which
// the plugin accepts and ignores).
func agentConfig() *base.AgentConfig {
	return &base.AgentConfig{Driver: &base.ClientDriverConfig{
		ClientMinPort: 14000,
		ClientMaxPort: 14512,
	}}
}

// pluginProc is one plugin process dispensed by Nomad's loader.
type pluginProc struct {
	inst loader.PluginInstance
	drv  drivers.DriverPlugin
	logs *logSink
	pid  int
	addr net.Addr
	load *loader.PluginLoader
	took time.Duration // launch + SetConfig
}

// launchPlugin starts a plugin process as the agent's driver manager does (Dispense from the
// loader: launch, handshake, SetConfig with the agent config).
func launchPlugin(cfg map[string]any, logger hclog.Logger, sink *logSink) (*pluginProc, error) {
	l, err := sharedLoader(cfg)
	if err != nil {
		return nil, err
	}
	started := time.Now()
	inst, err := l.Dispense(driverName, base.PluginTypeDriver, agentConfig(), logger)
	if err != nil {
		return nil, fmt.Errorf("dispensing driver %q: %v", driverName, err)
	}
	drv, ok := inst.Plugin().(drivers.DriverPlugin)
	if !ok {
		inst.Kill()
		return nil, fmt.Errorf("dispensed plugin is a %T, not a drivers.DriverPlugin", inst.Plugin())
	}
	rc, ok := inst.ReattachConfig()
	if !ok || rc == nil {
		inst.Kill()
		return nil, errors.New("no reattach config for an external plugin")
	}
	return &pluginProc{inst: inst, drv: drv, logs: sink, pid: rc.Pid, addr: rc.Addr, load: l, took: time.Since(started)}, nil
}

// startPlugin: a plugin process of this test's own, killed when the test ends.
func startPlugin(t *testing.T, cfg map[string]any) *pluginProc {
	t.Helper()
	logger, sink := testLogger(t, "plugin")
	p, err := launchPlugin(cfg, logger, sink)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.inst.Kill)
	t.Logf("plugin pid %d at %s %s (launch + SetConfig %v)", p.pid, p.addr.Network(), p.addr, p.took.Round(time.Millisecond))
	return p
}

// The plugin process most tests share, like the one long-lived process of an agent: started
// on first use with the session config, killed after the last test.
var session struct {
	once sync.Once
	p    *pluginProc
	err  error
	logs logSink
}

func sessionPlugin(t *testing.T) *pluginProc {
	t.Helper()
	session.once.Do(func() {
		cfg, err := pluginConfig(nil)
		if err != nil {
			session.err = err
			return
		}
		out, _ := logOutput(&session.logs, "shared-plugin")
		logger := hclog.New(&hclog.LoggerOptions{Name: "plugin", Level: hclog.Trace, Output: out})
		session.p, session.err = launchPlugin(cfg, logger, &session.logs)
		if session.err == nil {
			t.Logf("shared plugin pid %d (launch + SetConfig %v)", session.p.pid, session.p.took.Round(time.Millisecond))
		}
	})
	if session.err != nil {
		t.Fatalf("starting the shared plugin process: %v", session.err)
	}
	if session.p.inst.Exited() {
		t.Fatalf("the shared plugin process %d has exited (see the log of an earlier test)", session.p.pid)
	}
	mark := session.logs.Len()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("shared plugin log during this test:\n%s", tail(session.logs.Since(mark), 200))
		}
	})
	return session.p
}

// raw opens a second, plain gRPC connection to the plugin's socket, for checks on status
// codes (Nomad's client keeps the status but not always the call's shape).
func (p *pluginProc) raw(t *testing.T) proto.DriverClient {
	t.Helper()
	// grpc.Dial: the gRPC release Nomad 1.6 links predates grpc.NewClient. It connects lazily.
	conn, err := grpc.Dial("unix://"+p.addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return proto.NewDriverClient(conn)
}

// alive: the process exists and still answers PluginInfo.
func (p *pluginProc) alive(t *testing.T) {
	t.Helper()
	if p.inst.Exited() {
		t.Fatalf("plugin process %d exited", p.pid)
	}
	done := make(chan error, 1)
	go func() {
		_, err := p.drv.PluginInfo()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("plugin no longer answers PluginInfo: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("plugin does not answer PluginInfo within 10 s")
	}
}

// crash SIGKILLs the plugin process (what a crash looks like to the agent) and waits until
// go-plugin has noticed.
func (p *pluginProc) crash(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", p.pid, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !p.inst.Exited() {
		if time.Now().After(deadline) {
			t.Fatalf("go-plugin did not see plugin %d exit", p.pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// ---- assertions --------------------------------------------------------------------------------

func wantCode(t *testing.T, err error, code codes.Code, what string) *status.Status {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", what, code)
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("%s: %v is not a gRPC status, want %s", what, err, code)
	}
	if st.Code() != code {
		t.Fatalf("%s: got %s (%q), want %s", what, st.Code(), st.Message(), code)
	}
	return st
}

// within fails the test if fn does not return within d (a hang is a failure, not a timeout of
// the whole binary).
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// ---- values ------------------------------------------------------------------------------------

// ctyToGo: a decoded config object as plain JSON values.
func ctyToGo(t *testing.T, val cty.Value) map[string]any {
	t.Helper()
	raw, err := ctyjson.Marshal(val, val.Type())
	if err != nil {
		t.Fatalf("cty value to JSON: %v", err)
	}
	out := map[string]any{}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("decoded config is not an object: %s", raw)
	}
	return out
}

// sameJSON compares two values by their JSON form (numbers as float64, lists as []any).
func sameJSON(a, b any) bool {
	return reflect.DeepEqual(normJSON(a), normJSON(b))
}

func normJSON(v any) any {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("unencodable %T", v)
	}
	var out any
	_ = json.Unmarshal(raw, &out)
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
