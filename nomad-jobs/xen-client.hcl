# A Nomad client on a Xen dom0, joining the servers of nomad-jobs/server.hcl.
#
# Install the plugin: copy dist/nomad-driver-xen (or install the .deb) into plugin_dir, then
#   nomad agent -config xen-client.hcl
#
# Jobs find these nodes by the driver's attributes, for example
#   constraint {
#     attribute = "${attr.driver.xen.version}"
#     operator  = "version"
#     value     = ">= 4.17"
#   }
# or by the node class and metadata below (${node.class}, ${meta.xen_pool}). The driver also
# publishes ${attr.driver.xen.backend}, ${attr.driver.xen.scheduler},
# ${attr.driver.xen.nr_cpus} and ${attr.driver.xen.clickos_layout}.
data_dir   = "/opt/nomad/data"
plugin_dir = "/opt/nomad/plugins"
bind_addr  = "0.0.0.0"
log_level  = "INFO"

# No call home: the agent does not look for newer Nomad releases (the checkpoint service).
disable_update_check = true

server {
  enabled = false
}

client {
  enabled    = true
  node_class = "xen"

  server_join {
    retry_join = ["nomad-server-1", "nomad-server-2", "nomad-server-3"]
  }

  # Only the Xen driver on these hosts: no docker, exec, raw_exec, java or qemu tasks in dom0.
  options = {
    "driver.allowlist" = "xen"
  }

  meta {
    xen_pool = "default"
  }
}

# Task stats (`nomad alloc status -stats`): since Nomad 1.10.2 a client collects them from
# drivers only when it publishes allocation metrics.
telemetry {
  publish_allocation_metrics = true
}

# The label is the plugin's file name in plugin_dir.
plugin "nomad-driver-xen" {
  config {
    backend         = "xl"
    image_dirs      = ["/var/lib/nomad-driver-xen/images"]
    console_log_dir = "/var/log/xen/console"
  }
}
