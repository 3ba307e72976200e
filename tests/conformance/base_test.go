package conformance

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	plugin "github.com/hashicorp/go-plugin"
	version "github.com/hashicorp/go-version"
	"github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/drivers"
)

// TestHandshake: go-plugin with Nomad's handshake config launches the launcher, negotiates
// protocol 2 over gRPC on a private unix socket, and dispenses both plugin types Nomad asks for.
// Run without Nomad's cookie, the binary refuses like a Go plugin does.
func TestHandshake(t *testing.T) {
	dir, name := launcher(t)
	logger, _ := testLogger(t, "go-plugin")
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: base.Handshake,
		Plugins: map[string]plugin.Plugin{
			base.PluginTypeBase:   &base.PluginBase{},
			base.PluginTypeDriver: drivers.NewDriverPlugin(nil, logger),
		},
		Cmd:              exec.Command(filepath.Join(dir, name)),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
	})
	t.Cleanup(client.Kill)

	started := time.Now()
	rpc, err := client.Client()
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	t.Logf("handshake after %v", time.Since(started).Round(time.Millisecond))
	if v := client.NegotiatedVersion(); v != int(base.Handshake.ProtocolVersion) {
		t.Errorf("negotiated app protocol %d, want %d", v, base.Handshake.ProtocolVersion)
	}
	if p := client.Protocol(); p != plugin.ProtocolGRPC {
		t.Errorf("protocol %q, want grpc", p)
	}
	rc := client.ReattachConfig()
	if rc.Addr.Network() != "unix" {
		t.Errorf("listens on %s %s, want a unix socket", rc.Addr.Network(), rc.Addr)
	} else if st, err := os.Stat(rc.Addr.String()); err != nil {
		t.Errorf("socket %s: %v", rc.Addr, err)
	} else if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("socket %s has mode %v, want a socket only its owner can use", rc.Addr, st.Mode())
	}
	if err := rpc.Ping(); err != nil {
		t.Errorf("health check (go-plugin Ping): %v", err)
	}
	for _, kind := range []string{base.PluginTypeBase, base.PluginTypeDriver} {
		raw, err := rpc.Dispense(kind)
		if err != nil {
			t.Fatalf("dispense %q: %v", kind, err)
		}
		b, ok := raw.(base.BasePlugin)
		if !ok {
			t.Fatalf("dispensed %q is a %T", kind, raw)
		}
		if _, err := b.PluginInfo(); err != nil {
			t.Errorf("PluginInfo through %q: %v", kind, err)
		}
	}

	t.Run("without cookie", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(dir, name))
		cmd.Env = withoutCookie(os.Environ())
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("run without cookie: %v, want exit status 1", err)
		}
		if stdout.Len() != 0 {
			t.Errorf("printed on stdout without cookie: %q", stdout.String())
		}
		if !strings.Contains(stderr.String(), "plugin") {
			t.Errorf("stderr does not explain that this is a plugin: %q", stderr.String())
		}
	})
}

func withoutCookie(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, base.Handshake.MagicCookieKey+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// TestPluginInfo: what Nomad's loader catalogued in its fingerprint process.
func TestPluginInfo(t *testing.T) {
	logger, _ := testLogger(t, "loader")
	l, err := newLoader(t, sessionConfig(t, nil), logger)
	if err != nil {
		t.Fatalf("Nomad's plugin loader refused the plugin: %v", err)
	}
	infos := l.Catalog()[base.PluginTypeDriver]
	if len(infos) != 1 {
		t.Fatalf("loader catalogued %d driver plugins, want 1: %+v", len(infos), infos)
	}
	info := infos[0]
	if info.Type != base.PluginTypeDriver || info.Name != driverName {
		t.Errorf("type %q name %q, want %q %q", info.Type, info.Name, base.PluginTypeDriver, driverName)
	}
	want := version.Must(version.NewVersion(drivers.ApiVersion010))
	matched := false
	for _, v := range info.PluginApiVersions {
		pv, err := version.NewVersion(v)
		if err != nil {
			t.Errorf("API version %q is not a version: %v", v, err)
			continue
		}
		matched = matched || pv.Equal(want)
	}
	if !matched {
		t.Errorf("API versions %v do not include %s", info.PluginApiVersions, drivers.ApiVersion010)
	}
	pv, err := version.NewSemver(info.PluginVersion)
	if err != nil {
		t.Fatalf("plugin version %q is not semver: %v", info.PluginVersion, err)
	}
	dir, name := launcher(t)
	out, err := exec.Command(filepath.Join(dir, name), "version").Output()
	if err != nil {
		t.Fatalf("`%s version`: %v", name, err)
	}
	// "nomad-driver-xen <version>", possibly followed by where the build came from.
	got := strings.TrimSpace(string(out))
	if want := "nomad-driver-xen " + pv.Original(); got != want && !strings.HasPrefix(got, want+" (") {
		t.Errorf("`%s version` says %q, PluginInfo says %q", name, got, pv.Original())
	}
}

// Documented defaults (README.md, "Plugin configuration"; the limits on what a job may make
// dom0 do in docs/SECURITY.md).
var pluginDefaults = map[string]any{
	"backend":                "xl",
	"xl_path":                "xl",
	"libvirt_uri":            "xen:///system",
	"image_dirs":             []any{"/var/lib/nomad-driver-xen/images", "/usr/lib/xen/boot"},
	"fingerprint_period":     "30s",
	"console_log_dir":        "/var/log/xen/console",
	"clickos_layout":         "cosmos",
	"state_dir":              "/var/lib/nomad-driver-xen",
	"xenstored_socket":       "/run/xenstored/socket",
	"vif_scripts_dir":        "/etc/xen/scripts",
	"vif_scripts":            []any{"vif-bridge", "vif-route", "vif-nat"},
	"vif_bridges":            []any{"xenbr0"},
	"max_vifs":               8,
	"max_click_config_bytes": 65536,
	"log_collection":         "nomad",
	"log_max_files":          10,
	"log_max_file_size_mb":   10,
}

// TestConfigSchema: the plugin's config schema converts with Nomad's hclspec converter and an
// empty config block decodes (as the loader decodes it) to the documented defaults.
func TestConfigSchema(t *testing.T) {
	p := sessionPlugin(t)
	schema, err := p.drv.ConfigSchema()
	if err != nil || schema == nil {
		t.Fatalf("ConfigSchema: %v (spec %v)", err, schema)
	}
	spec, diags := hclspecutils.Convert(schema)
	if diags.HasErrors() {
		t.Fatalf("Nomad cannot convert the config schema: %v", diags)
	}
	val, diags, errs := hclutils.ParseHclInterface(map[string]any{}, spec, nil)
	if diags.HasErrors() {
		t.Fatalf("an empty config block does not decode: %v", errs)
	}
	got := ctyToGo(t, val)
	// Every documented default is there; any other setting (an optional block, a setting with no
	// default) decodes to nothing.
	for _, k := range keys(got) {
		if _, documented := pluginDefaults[k]; !documented && !emptyJSON(got[k]) {
			t.Errorf("setting %q decodes to %#v in an empty config block, but has no documented default", k, got[k])
		}
	}
	for k, want := range pluginDefaults {
		if !sameJSON(got[k], want) {
			t.Errorf("default of %q is %#v, the docs say %#v", k, got[k], want)
		}
	}
}

// emptyJSON: null, or an empty list or object.
func emptyJSON(v any) bool {
	switch x := normJSON(v).(type) {
	case nil:
		return true
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	}
	return false
}

// TestSetConfigAcceptsDefaults: no config block and an empty one both get through the
// loader's validation process and the driver manager's SetConfig (with the agent config).
func TestSetConfigAcceptsDefaults(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  map[string]any
	}{{"no config block", nil}, {"empty config block", map[string]any{}}} {
		t.Run(tc.name, func(t *testing.T) {
			p := startPlugin(t, tc.cfg)
			caps, err := p.drv.Capabilities()
			if err != nil || caps == nil {
				t.Fatalf("Capabilities after SetConfig: %v", err)
			}
			p.alive(t)
		})
	}
}

// TestSetConfigRejectsBadConfig: a bad value stops the agent's plugin loader with our message,
// which names the setting; shape errors are caught by Nomad with our schema. No plugin process
// outlives the refusal: Nomad 1.6's loader does not stop a plugin whose SetConfig failed, so
// the plugin stops itself (a few seconds later; later Nomad releases stop it at once).
func TestSetConfigRejectsBadConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  map[string]any
		want string
	}{
		{"backend", map[string]any{"backend": "kvm"}, `plugin config "backend": got "kvm", must be one of "xl", "libvirt"`},
		{"fingerprint_period", map[string]any{"fingerprint_period": "0s"}, `plugin config "fingerprint_period": got "0s"`},
		{"image_dirs", map[string]any{"image_dirs": []any{"relative/images"}}, `plugin config "image_dirs[0]": got "relative/images"`},
		{"clickos_layout", map[string]any{"clickos_layout": "other"}, `plugin config "clickos_layout": got "other"`},
		{"unknown key (schema)", map[string]any{"no_such_setting": true}, `no_such_setting`},
		{"wrong type (schema)", map[string]any{"image_dirs": "/one/dir"}, `image_dirs`},
	}
	var launched []int
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logger, sink := testLogger(t, "loader")
			_, err := newLoader(t, tc.cfg, logger)
			launched = append(launched, startedPids(sink.String())...)
			if err == nil {
				t.Fatalf("loader accepted %v", tc.cfg)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loader error does not contain %q:\n%v", tc.want, err)
			}
			t.Logf("agent would stop with: %v", err)
		})
	}
	if len(launched) < len(cases) {
		t.Fatalf("found %d plugin launches in the loaders' logs, want at least %d", len(launched), len(cases))
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range launched {
		for !processGone(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("plugin process %d still runs 15 s after its configuration was refused", pid)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("all %d plugin processes the loaders launched have exited", len(launched))
}

// startedPids: the pids go-plugin logged as "plugin started" (one per plugin launch).
func startedPids(log string) []int {
	var pids []int
	for _, m := range regexp.MustCompile(`plugin started: .*\bpid=(\d+)`).FindAllStringSubmatch(log, -1) {
		if pid, err := strconv.Atoi(m[1]); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
