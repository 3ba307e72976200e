# A ClickOS-style network function as a Nomad service.
#
# The guest is a Xen PV unikernel; its Click configuration is rendered by Nomad's
# template runner into the task directory and pushed into the guest through XenStore
# before the domain is unpaused.  Run it with:
#
#   nomad job run nomad-jobs/clickos.nomad
#   nomad alloc logs <alloc>           # the guest console
#   nomad alloc status <alloc>         # includes the spawn/boot timing event
job "clickos" {
  datacenters = ["*"]
  type        = "service"

  group "router" {
    count = 1

    # Nomad reserves 300 MB of disk per allocation unless told; a unikernel needs almost none
    # (10 MB is Nomad's minimum). The task's logs must fit in it, hence the logs block below.
    ephemeral_disk {
      size = 10
    }

    restart {
      attempts = 2
      interval = "5m"
      delay    = "5s"
      mode     = "fail"
    }

    task "firewall" {
      driver = "xen"

      # The console log kept by Nomad: 2 files of 2 MB (the default, 10 x 10 MB, needs 100 MB
      # of ephemeral disk).
      logs {
        max_files     = 2
        max_file_size = 2
      }

      config {
        kernel            = "/var/lib/nomad-driver-xen/images/ndx-unikernel"
        cmdline           = "clickos tick=5"
        vcpus             = 1
        click_config_file = "local/firewall.click"
        boot_marker       = "NDX-GUEST READY"
        boot_timeout      = "60s"

        vif {
          bridge = "xenbr0"
        }
      }

      template {
        destination = "local/firewall.click"
        data        = <<EOT
// Minimal stateless firewall: pass ARP and IPv4 to port 80, drop the rest.
in  :: FromDevice(0);
out :: ToDevice(0);
cl  :: Classifier(12/0806, 12/0800, -);
in -> cl;
cl[0] -> out;
cl[1] -> CheckIPHeader(14) -> IPFilter(allow dst port 80, deny all) -> out;
cl[2] -> Discard;
EOT
      }

      kill_timeout = "10s"

      resources {
        cpu    = 100
        memory = 16
      }
    }
  }
}
