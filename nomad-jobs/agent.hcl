# A single-node Nomad agent (server + client) on a Xen dom0 with nomad-driver-xen.
#
# Install the plugin's launcher into plugin_dir first:
#   nomad-driver-xen install --plugin-dir /opt/nomad/plugins
# then start the agent:
#   nomad agent -config nomad-jobs/agent.hcl
data_dir   = "/opt/nomad/data"
plugin_dir = "/opt/nomad/plugins"
bind_addr  = "0.0.0.0"
log_level  = "INFO"

# No call home: the agent does not look for newer Nomad releases (the checkpoint service).
disable_update_check = true

server {
  enabled          = true
  bootstrap_expect = 1
}

client {
  enabled = true

  # Only the drivers this host is for.
  options = {
    "driver.allowlist" = "xen"
  }
}

# Task stats (`nomad alloc status -stats`, /v1/client/allocation/<id>/stats): since Nomad 1.10.2 a
# client collects them from drivers only when it publishes allocation metrics.
telemetry {
  publish_allocation_metrics = true
}

# The label is the launcher's file name in plugin_dir.
plugin "nomad-driver-xen" {
  config {
    backend            = "xl"
    image_dirs         = ["/var/lib/nomad-driver-xen/images"]
    console_log_dir    = "/var/log/xen/console"
    clickos_layout     = "cosmos"
    fingerprint_period = "30s"
  }
}
