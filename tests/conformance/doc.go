// Package conformance drives the nomad-driver-xen plugin as an external process, the way a
// Nomad agent does (go-plugin handshake, Nomad's plugin loader, its gRPC driver client and
// the driver test harness), and checks every answer through Nomad's own converters.
//
// Everything is in the _test.go files; build the suite with
//
//	CGO_ENABLED=0 go test -c -trimpath -o conformance.test .
//
// and run it with -plugin pointing at a launcher written by `nomad-driver-xen install`.
// See README.md for the flags, what is covered and what is not.
package conformance
