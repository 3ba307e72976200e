package conformance

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/nomad/api"
	"github.com/hashicorp/nomad/client/taskenv"
	"github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/helper/uuid"
	"github.com/hashicorp/nomad/jobspec2"
	"github.com/hashicorp/nomad/nomad/mock"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/plugins/drivers"
	"github.com/hashicorp/nomad/plugins/drivers/proto"
	"github.com/zclconf/go-cty/cty"
	"google.golang.org/grpc/codes"
)

// Documented task config defaults (README.md, "Task configuration").
var taskDefaults = map[string]any{
	"vcpus":           1,
	"click_router_id": 0,
	"on_crash":        "destroy",
	"boot_timeout":    "30s",
}

// exampleTask is one `driver = "xen"` task of a job in nomad-jobs/.
type exampleTask struct {
	file  string
	job   *api.Job
	group *api.TaskGroup
	task  *api.Task
}

// exampleTasks parses nomad-jobs/*.nomad with Nomad's HCL2 jobspec parser (what `nomad job run`
// does), sends each job through JSON as the CLI does when it submits it, and returns every task
// that uses our driver.
func exampleTasks(t *testing.T) []exampleTask {
	t.Helper()
	if *flagRepo == "" {
		t.Fatal("pass -repo (the repository checkout with nomad-jobs/)")
	}
	files, err := filepath.Glob(filepath.Join(*flagRepo, "nomad-jobs", "*.nomad"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no nomad-jobs/*.nomad under %s (%v)", *flagRepo, err)
	}
	var out []exampleTask
	for _, file := range files {
		body, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := jobspec2.ParseWithConfig(&jobspec2.ParseConfig{Path: file, Body: body, Strict: true})
		if err != nil {
			t.Fatalf("Nomad cannot parse %s: %v", filepath.Base(file), err)
		}
		wire, err := json.Marshal(parsed)
		if err != nil {
			t.Fatal(err)
		}
		var job api.Job
		if err := json.Unmarshal(wire, &job); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range job.TaskGroups {
			for _, task := range g.Tasks {
				if task.Driver == driverName {
					out = append(out, exampleTask{file: filepath.Base(file), job: &job, group: g, task: task})
					n++
				}
			}
		}
		if n == 0 {
			t.Fatalf("%s has no task with driver = %q", filepath.Base(file), driverName)
		}
	}
	return out
}

func exampleTaskFrom(t *testing.T, file string) exampleTask {
	t.Helper()
	for _, ex := range exampleTasks(t) {
		if ex.file == file {
			return ex
		}
	}
	t.Fatalf("no example task in nomad-jobs/%s", file)
	return exampleTask{}
}

// taskVars are the variables the client interpolates a task's config with (NOMAD_*, attr.*,
// node.*, env ...), built by Nomad's task environment builder for a mock node and allocation.
func taskVars(t *testing.T, task *structs.Task) map[string]cty.Value {
	t.Helper()
	return envVars(t, taskEnv(task))
}

func taskEnv(task *structs.Task) *taskenv.TaskEnv {
	return taskenv.NewBuilder(mock.Node(), mock.Alloc(), task, "global").Build()
}

func envVars(t *testing.T, env *taskenv.TaskEnv) map[string]cty.Value {
	t.Helper()
	vars, _, err := env.AllValues()
	if err != nil {
		t.Fatalf("building the task environment: %v", err)
	}
	return vars
}

// interpolated: a job's config value with ${...} in its strings replaced from the task
// environment, as the client does before the driver sees it.
func interpolated(env *taskenv.TaskEnv, v any) any {
	switch x := normJSON(v).(type) {
	case string:
		return env.ReplaceEnv(x)
	case []any:
		for i := range x {
			x[i] = interpolated(env, x[i])
		}
		return x
	case map[string]any:
		for k := range x {
			x[k] = interpolated(env, x[k])
		}
		return x
	default:
		return x
	}
}

// decodeTaskConfig is the client's path from a job's config {} to the bytes in
// StartTask: the driver's schema converted with Nomad's hclspec converter, the config decoded
// with the task's variables, encoded into the TaskConfig as cty msgpack.
func decodeTaskConfig(t *testing.T, spec hcldec.Spec, task *structs.Task, tc *drivers.TaskConfig) (cty.Value, []error) {
	t.Helper()
	return decodeWithEnv(t, spec, task, taskEnv(task), tc)
}

func decodeWithEnv(t *testing.T, spec hcldec.Spec, task *structs.Task, env *taskenv.TaskEnv, tc *drivers.TaskConfig) (cty.Value, []error) {
	t.Helper()
	val, diags, errs := hclutils.ParseHclInterface(task.Config, spec, envVars(t, env))
	if diags.HasErrors() {
		return cty.NilVal, errs
	}
	if tc != nil {
		if err := tc.EncodeDriverConfig(val); err != nil {
			t.Fatalf("encoding the driver config: %v", err)
		}
	}
	return val, nil
}

func taskSpec(t *testing.T, drv drivers.DriverPlugin) hcldec.Spec {
	t.Helper()
	schema, err := drv.TaskConfigSchema()
	if err != nil || schema == nil {
		t.Fatalf("TaskConfigSchema: %v (spec %v)", err, schema)
	}
	spec, diags := hclspecutils.Convert(schema)
	if diags.HasErrors() {
		t.Fatalf("Nomad cannot convert the task config schema: %v", diags)
	}
	return spec
}

// TestTaskConfigSchema: the task schema converts, every example job's config {} decodes
// through the client's path to what the job says plus the documented defaults, and bad shapes
// are refused by Nomad with the field named.
func TestTaskConfigSchema(t *testing.T) {
	p := sessionPlugin(t)
	spec := taskSpec(t, p.drv)

	for _, ex := range exampleTasks(t) {
		t.Run(ex.file+"/"+ex.task.Name, func(t *testing.T) {
			task := &structs.Task{Name: ex.task.Name, Driver: ex.task.Driver, Config: ex.task.Config}
			tc := &drivers.TaskConfig{}
			env := taskEnv(task)
			val, errs := decodeWithEnv(t, spec, task, env, tc)
			if errs != nil {
				t.Fatalf("the client would fail this task with: %v", errs)
			}
			got := ctyToGo(t, val)
			for k, want := range ex.task.Config {
				if !sameJSONSubset(got[k], interpolated(env, want)) {
					t.Errorf("%s decodes to %#v, the job says %#v", k, got[k], want)
				}
			}
			for k, want := range taskDefaults {
				if _, set := ex.task.Config[k]; !set && !sameJSON(got[k], want) {
					t.Errorf("default of %s is %#v, README says %#v", k, got[k], want)
				}
			}
			var back map[string]any
			if err := tc.DecodeDriverConfig(&back); err != nil {
				t.Fatalf("the msgpack driver config does not decode: %v", err)
			}
			if back["kernel"] != interpolated(env, ex.task.Config["kernel"]) {
				t.Errorf("kernel after msgpack round trip %#v, want %#v", back["kernel"], ex.task.Config["kernel"])
			}
		})
	}

	bad := []struct {
		name   string
		config map[string]any
		want   []string
	}{
		{"missing kernel", map[string]any{"cmdline": "x"}, []string{"kernel", "Missing required argument"}},
		{"unknown key", map[string]any{"kernel": "/k", "bogus_key": 1}, []string{"bogus_key"}},
		{"wrong type", map[string]any{"kernel": "/k", "vcpus": "many"}, []string{"vcpus"}},
		{"vif attribute instead of block", map[string]any{"kernel": "/k", "vif": "xenbr0"}, []string{"vif"}},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			task := &structs.Task{Name: "bad", Driver: driverName, Config: tc.config}
			_, errs := decodeTaskConfig(t, spec, task, nil)
			if errs == nil {
				t.Fatalf("config %v decodes, want a validation failure", tc.config)
			}
			text := ""
			for _, e := range errs {
				text += e.Error() + "\n"
			}
			for _, w := range tc.want {
				if !strings.Contains(text, w) {
					t.Errorf("validation error does not mention %q:\n%s", w, text)
				}
			}
		})
	}
}

// sameJSONSubset: like sameJSON, but objects in `got` may have more keys (a decoded block
// carries every attribute of the schema, null when unset).
func sameJSONSubset(got, want any) bool {
	return subset(normJSON(got), normJSON(want))
}

func subset(got, want any) bool {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return false
		}
		for k, wv := range w {
			if !subset(g[k], wv) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !subset(g[i], w[i]) {
				return false
			}
		}
		return true
	default:
		return sameJSON(got, want)
	}
}

// TestCapabilities: what the driver claims, and that the claims match what it does.
func TestCapabilities(t *testing.T) {
	p := sessionPlugin(t)
	caps, err := p.drv.Capabilities()
	if err != nil {
		t.Fatalf("Capabilities: %v", err)
	}
	t.Logf("capabilities: %+v", *caps)
	if caps.FSIsolation != drivers.FSIsolationNone {
		t.Errorf("fs isolation %q: a PV guest cannot see the host's task dir, want none (host paths)", caps.FSIsolation)
	}
	if caps.Exec {
		t.Error("claims exec, but a unikernel has no shell")
	}
	if caps.MustInitiateNetwork {
		t.Error("claims it must create networks, but does not implement CreateNetwork")
	}
	if !slices.Contains(caps.NetIsolationModes, drivers.NetIsolationModeHost) {
		t.Errorf("network modes %v lack host", caps.NetIsolationModes)
	}
	for _, m := range caps.NetIsolationModes {
		if m == drivers.NetIsolationModeGroup || m == drivers.NetIsolationModeTask {
			t.Errorf("network mode %q needs network namespaces, which the driver does not create", m)
		}
	}
	if caps.RemoteTasks {
		t.Error("claims remote tasks (Nomad 1.6-1.9), but a guest runs on this node")
	}
	if caps.MountConfigs != drivers.MountConfigSupportNone {
		t.Errorf("mount configs %v: volume mounts cannot reach a PV guest", caps.MountConfigs)
	}
	if caps.DisableLogCollection {
		t.Error("disables log collection, but streams the console into Nomad's log FIFOs")
	}

	// Claims vs behaviour: no exec, no network creation.
	raw := p.raw(t)
	ctx := ctxTimeout(t, 10*time.Second)
	_, err = raw.ExecTask(ctx, &proto.ExecTaskRequest{TaskId: "any", Command: []string{"/bin/true"}})
	wantCode(t, err, codes.Unimplemented, "ExecTask")
	_, err = raw.CreateNetwork(ctx, &proto.CreateNetworkRequest{AllocId: uuid.Generate(), Hostname: "x"})
	wantCode(t, err, codes.Unimplemented, "CreateNetwork")
}
