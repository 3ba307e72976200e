package conformance

import (
	"context"
	"strings"
	"testing"
	"time"

	pstructs "github.com/hashicorp/nomad/plugins/shared/structs"

	"github.com/hashicorp/nomad/plugins/drivers"
)

// Node attributes a healthy Xen host reports (README.md, "What the node shows").
var healthyAttributes = []string{
	"driver.xen.version", "driver.xen.scheduler", "driver.xen.total_memory",
	"driver.xen.nr_cpus", "driver.xen.backend", "driver.xen.clickos_layout",
}

// Values that change while guests come and go must not be attributes: a changed attribute
// re-registers the node, and Nomad's server then evaluates every job with an allocation on it.
var churningAttributes = []string{"driver.xen.free_memory"}

// TestFingerprint: the first fingerprint arrives at once, not after fingerprint_period (30 s by
// default): within 10 s, the time of one host probe (`xl info`, slow under emulation on a loaded
// host) with room to spare. The stream stays open (and keeps reporting every fingerprint_period)
// for 10 s, and every attribute is one Nomad can put on a node.
func TestFingerprint(t *testing.T) {
	t.Parallel()
	p := sessionPlugin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	opened := time.Now()
	ch, err := p.drv.Fingerprint(ctx)
	if err != nil {
		t.Fatalf("Fingerprint: %v", err)
	}
	var first *drivers.Fingerprint
	select {
	case first = <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no fingerprint within 10 s")
	}
	if first == nil {
		t.Fatal("fingerprint stream closed before its first response")
	}
	t.Logf("first fingerprint after %v: health %s (%q), %d attributes",
		time.Since(opened).Round(time.Millisecond), first.Health, first.HealthDescription, len(first.Attributes))
	checkFingerprint(t, first)

	count := 1
	hold := time.After(10 * time.Second)
	for open := true; open; {
		select {
		case fp, ok := <-ch:
			if !ok {
				t.Fatalf("fingerprint stream closed after %v", time.Since(opened))
			}
			count++
			checkFingerprint(t, fp)
		case <-hold:
			open = false
		}
	}
	t.Logf("%d fingerprints while the stream was held open for 10 s", count)
	if period, ok := sessionConfig(t, nil)["fingerprint_period"].(string); ok && period == defaultFingerprintPeriod.String() && count < 2 {
		t.Errorf("%d fingerprint(s) in 10 s with fingerprint_period %s, want a periodic one too", count, period)
	}
	p.alive(t)
}

func checkFingerprint(t *testing.T, fp *drivers.Fingerprint) {
	t.Helper()
	if fp.Err != nil {
		t.Fatalf("fingerprint stream error: %v", fp.Err)
	}
	switch want := *flagExpectHealth; want {
	case "any":
	case string(drivers.HealthStateUndetected), string(drivers.HealthStateUnhealthy), string(drivers.HealthStateHealthy):
		if string(fp.Health) != want {
			t.Fatalf("health %q (%q), want %q", fp.Health, fp.HealthDescription, want)
		}
	default:
		t.Fatalf("-expect-health %q is not one of undetected, unhealthy, healthy, any", want)
	}
	if fp.Health != drivers.HealthStateHealthy && fp.HealthDescription == "" {
		t.Errorf("health %q without a description saying why", fp.Health)
	}
	for key, attr := range fp.Attributes {
		if !strings.HasPrefix(key, "driver."+driverName+".") {
			t.Errorf("attribute %q is not under driver.%s.", key, driverName)
		}
		if attr == nil {
			t.Errorf("attribute %q is nil", key)
			continue
		}
		if err := attr.Validate(); err != nil {
			t.Errorf("attribute %q = %s is not valid for Nomad: %v", key, attr.GoString(), err)
		}
		rendered := attr.GoString()
		if rendered == "" {
			t.Errorf("attribute %q renders empty (Nomad would delete it from the node)", key)
		}
		// What a constraint on ${attr.<key>} compares against parses back to the same value.
		if back := pstructs.ParseAttribute(rendered); attr.String == nil && !sameAttribute(back, attr) {
			t.Errorf("attribute %q = %q does not parse back as the same value (%v)", key, rendered, back)
		}
	}
	if fp.Health == drivers.HealthStateHealthy {
		for _, key := range healthyAttributes {
			if _, ok := fp.Attributes[key]; !ok {
				t.Errorf("healthy fingerprint lacks %s (has %v)", key, keys(fp.Attributes))
			}
		}
	}
	for _, key := range churningAttributes {
		if _, ok := fp.Attributes[key]; ok {
			t.Errorf("fingerprint has %s, which changes with every guest started or stopped", key)
		}
	}
}

// TestTaskEventsStreamStaysOpen: the client opens one TaskEvents stream per plugin and
// re-opens it at once if it ends; it must stay open and quiet while nothing happens.
func TestTaskEventsStreamStaysOpen(t *testing.T) {
	t.Parallel()
	p := sessionPlugin(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := p.drv.TaskEvents(ctx)
	if err != nil {
		t.Fatalf("TaskEvents: %v", err)
	}
	hold := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("TaskEvents stream ended")
			}
			if ev.Err != nil {
				t.Fatalf("TaskEvents stream failed: %v", ev.Err)
			}
			t.Errorf("event with no task running: %+v", ev)
		case <-hold:
			p.alive(t)
			return
		}
	}
}

// TestReattach: after an agent crash the new agent reattaches to the still-running plugin with
// the stored reattach config (no handshake, no SetConfig) and must get the same answers.
func TestReattach(t *testing.T) {
	p := sessionPlugin(t)
	rc, _ := p.inst.ReattachConfig()
	again, err := p.load.Reattach(driverName, "driver", rc)
	if err != nil {
		t.Fatalf("reattach to %s: %v", rc.Addr, err)
	}
	// Not killed: that would stop the shared process (the agent kills it only at its own stop).
	drv := again.Plugin().(drivers.DriverPlugin)
	info, err := drv.PluginInfo()
	if err != nil || info.Name != driverName {
		t.Fatalf("PluginInfo after reattach: %+v, %v", info, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ch, err := drv.Fingerprint(ctx)
	if err != nil {
		t.Fatalf("Fingerprint after reattach: %v", err)
	}
	select {
	case fp := <-ch:
		if fp == nil {
			t.Fatal("fingerprint stream closed")
		}
		checkFingerprint(t, fp)
	case <-ctx.Done():
		t.Fatal("no fingerprint after reattach")
	}
	if again.Exited() {
		t.Fatal("reattached client reports the plugin exited")
	}
}

// sameAttribute: b is the same value as a, in the same unit (what a constraint compares).
func sameAttribute(a, b *pstructs.Attribute) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.Unit != b.Unit || a.GoString() != b.GoString() {
		return false
	}
	cmp, ok := a.Compare(b)
	return ok && cmp == 0
}
