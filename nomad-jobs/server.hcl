# A Nomad server of a cluster whose Xen dom0s are clients (nomad-jobs/xen-client.hcl).
# Servers schedule; they run no tasks and load no task-driver plugin.
#
# Run three of them (bootstrap_expect = 3), each with its own name and this file:
#   nomad agent -config server.hcl
# Put the servers' addresses into retry_join below and into the clients' retry_join.
data_dir  = "/opt/nomad/data"
bind_addr = "0.0.0.0"
log_level = "INFO"

# No call home: the agent does not look for newer Nomad releases (the checkpoint service).
disable_update_check = true

server {
  enabled          = true
  bootstrap_expect = 3

  server_join {
    retry_join = ["nomad-server-1", "nomad-server-2", "nomad-server-3"]
  }
}

client {
  enabled = false
}
