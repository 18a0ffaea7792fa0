// What the Go programs of the driver matrix share (built with one of them: `go build -tags pgx`
// or `-tags libpq`; tests/test_drivers.py). Each program names its driver's SQLSTATE in
// `sqlstate`.
package main

import (
	"fmt"
	"os"
	"sync"
)

var (
	table   = os.Getenv("PGB_TABLE")
	clients = 10
	current = "start"
)

// fail exits 1 naming the step, the error and its SQLSTATE.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "FAIL in step '%s': %v (SQLSTATE %s)\n", current, err, sqlstate(err))
	os.Exit(1)
}

func check(err error) {
	if err != nil {
		fail(err)
	}
}

func want(cond bool, format string, args ...interface{}) {
	if !cond {
		fail(fmt.Errorf(format, args...))
	}
}

// inClients runs `transaction(w, i)` twelve times (i) for each of the concurrent clients (w),
// each client in a goroutine of its own, and fails with the first error.
func inClients(transaction func(w, i int) error) {
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 12; i++ {
				if err := transaction(w, i); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fail(err)
	}
}
