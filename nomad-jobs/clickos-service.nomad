# A ClickOS network function registered as a Nomad service at the guest's own address.
#
# The guest sits on the bridge xenbr0 with an address of its own (vif ip). The driver tells
# Nomad that address and the guest's ports (its driver network), so the service below is
# registered at 10.99.0.10:80, not at the host's address. Run it with:
#
#   nomad job run nomad-jobs/clickos-service.nomad
#   nomad service info clickos-firewall    # 10.99.0.10:80
#
# Nomad reserves a host port for "http" as for any task, but nothing forwards it into the
# guest: a service must use the guest's address (address_mode = "driver", or "auto").
job "clickos-service" {
  datacenters = ["*"]
  type        = "service"

  group "router" {
    # One address per allocation: with count > 1 each allocation gets 10.99.0.1<index>.
    count = 1

    network {
      # The guest serves on port 80 of its own address. Every port of a guest with an
      # address needs a "to": Nomad registers driver-address services at "to".
      port "http" {
        to = 80
      }
    }

    task "firewall" {
      driver = "xen"

      config {
        kernel            = "/var/lib/nomad-driver-xen/images/ndx-unikernel"
        cmdline           = "clickos tick=5"
        click_config_file = "local/firewall.click"
        boot_marker       = "NDX-GUEST READY"
        boot_timeout      = "60s"

        vif {
          bridge = "xenbr0"
          ip     = "10.99.0.1${NOMAD_ALLOC_INDEX}"
          # no mac: the driver derives a stable one in Xen's 00:16:3e range
        }

        # Which vif's address Nomad advertises when there are several (default: the first
        # vif with an ip).
        advertise_vif = 0
      }

      service {
        name         = "clickos-firewall"
        provider     = "nomad"
        port         = "http"
        address_mode = "driver"
      }

      template {
        destination = "local/firewall.click"
        data        = <<EOT
// Stateless firewall: pass ARP and IPv4 to port 80, drop the rest.
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
