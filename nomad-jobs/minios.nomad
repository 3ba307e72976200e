# A Mini-OS style batch unikernel: it boots, does its work and powers itself off.
# The allocation completes with exit code 0 when the guest powers off cleanly and
# fails with a non-zero exit code when the guest crashes.
job "minios" {
  datacenters = ["*"]
  type        = "batch"

  group "batch" {
    count = 1

    # Nomad reserves 300 MB of disk per allocation unless told; a unikernel needs almost none (10 is Nomad's minimum).
    ephemeral_disk {
      size = 10
    }

    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "compute" {
      driver = "xen"

      config {
        kernel      = "/var/lib/nomad-driver-xen/images/ndx-unikernel"
        cmdline     = "tick=1 poweroff_after=3"
        boot_marker = "NDX-GUEST READY"
      }

      resources {
        cpu    = 100
        memory = 16
      }
    }
  }
}
