# A Mini-OS style batch unikernel: it boots, does its work and powers itself off.
# The allocation completes with exit code 0 when the guest powers off cleanly and
# fails with a non-zero exit code when the guest crashes.
job "minios" {
  datacenters = ["*"]
  type        = "batch"

  group "batch" {
    count = 1

    # Nomad reserves 300 MB of disk per allocation unless told; a unikernel needs almost none
    # (10 MB is Nomad's minimum). The task's logs must fit in it, hence the logs block below.
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

      # The console log kept by Nomad: 2 files of 2 MB (the default, 10 x 10 MB, needs 100 MB
      # of ephemeral disk).
      logs {
        max_files     = 2
        max_file_size = 2
      }

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
