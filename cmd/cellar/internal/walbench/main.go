// Command walbench times WAL archiving tools side by side, one process
// call per file, as PostgreSQL's archive_command and restore_command call
// them. testdata/bench-wal.sh sets up the servers and calls it.
//
//	walbench -runs 3 -tool 'cellar=cellar --config C wal-push bench{run} {path}' \
//	         -tool 'pgbackrest=pgbackrest --stanza=bench{run} archive-push {path}' FILE...
//
// For every run it drops the page cache (when allowed), then runs each
// tool over all files in turn, interleaving the tools run by run. {run} is
// replaced by the run number, {path} by the file's path and {name} by its
// base name. It prints, per tool, the median over runs of the median and
// p95 wall milliseconds per file and of the CPU milliseconds (user+system
// of the child) per file, and the ratio of the medians to the first tool.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type tool struct {
	name, template string
	// per run: medians and p95 of wall ms, mean CPU ms
	median, p95, cpu []float64
	total            []float64 // wall seconds for the whole batch
}

type toolFlags []*tool

func (t *toolFlags) String() string { return "" }
func (t *toolFlags) Set(v string) error {
	name, tmpl, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("-tool NAME=COMMAND")
	}
	*t = append(*t, &tool{name: name, template: tmpl})
	return nil
}

func main() {
	var tools toolFlags
	runs := flag.Int("runs", 3, "runs per tool (the medians of these are reported)")
	as := flag.String("as", "", "run the commands as this user")
	setup := flag.String("setup", "", "a shell command run before every batch, with {run} and {tool} replaced")
	done := flag.Bool("done", false, "after each success, rename archive_status/NAME.ready to .done as PostgreSQL does")
	flag.Var(&tools, "tool", "NAME=COMMAND template; repeatable")
	flag.Parse()
	files := flag.Args()
	if len(tools) == 0 || len(files) == 0 {
		fmt.Fprintln(os.Stderr, "walbench: give at least one -tool and one file")
		os.Exit(2)
	}
	cred, err := credential(*as)
	if err != nil {
		fmt.Fprintln(os.Stderr, "walbench:", err)
		os.Exit(2)
	}
	for run := 1; run <= *runs; run++ {
		for _, t := range tools {
			expand := func(s string) string {
				return strings.NewReplacer("{run}", fmt.Sprint(run), "{tool}", t.name).Replace(s)
			}
			if *setup != "" {
				if out, err := exec.Command("bash", "-c", expand(*setup)).CombinedOutput(); err != nil {
					fmt.Fprintf(os.Stderr, "walbench: setup for %s run %d: %v\n%s", t.name, run, err, out)
					os.Exit(1)
				}
			}
			dropCaches()
			var walls, cpus []float64
			start := time.Now()
			for _, f := range files {
				cmdline := strings.NewReplacer("{run}", fmt.Sprint(run), "{path}", f, "{name}", filepath.Base(f), "{tool}", t.name).Replace(t.template)
				// As PostgreSQL runs archive_command: through /bin/sh.
				cmd := exec.Command("/bin/sh", "-c", "exec "+cmdline)
				cmd.Dir = filepath.Dir(f)
				cmd.SysProcAttr = cred
				t0 := time.Now()
				out, err := cmd.CombinedOutput()
				wall := time.Since(t0)
				if err != nil {
					fmt.Fprintf(os.Stderr, "walbench: %s failed on %s: %v\n%s", t.name, f, err, out)
					os.Exit(1)
				}
				if *done {
					st := filepath.Join(filepath.Dir(f), "archive_status", filepath.Base(f))
					_ = os.Rename(st+".ready", st+".done")
				}
				ps := cmd.ProcessState
				walls = append(walls, float64(wall.Microseconds())/1000)
				cpus = append(cpus, float64((ps.UserTime()+ps.SystemTime()).Microseconds())/1000)
			}
			t.total = append(t.total, time.Since(start).Seconds())
			t.median = append(t.median, percentile(walls, 50))
			t.p95 = append(t.p95, percentile(walls, 95))
			t.cpu = append(t.cpu, mean(cpus))
			fmt.Printf("run %d %-12s median %7.1f ms  p95 %7.1f ms  cpu %6.1f ms/file  %5.1f files/s\n",
				run, t.name, t.median[run-1], t.p95[run-1], t.cpu[run-1], float64(len(files))/t.total[run-1])
		}
	}
	fmt.Printf("\n%d files, medians of %d runs:\n", len(files), *runs)
	base := percentile(tools[0].median, 50)
	for _, t := range tools {
		m := percentile(t.median, 50)
		fmt.Printf("%-12s median %7.1f ms/file  p95 %7.1f ms  cpu %6.1f ms/file  %6.1f files/s  (%.2fx %s)\n",
			t.name, m, percentile(t.p95, 50), percentile(t.cpu, 50), float64(len(files))/percentile(t.total, 50), m/base, tools[0].name)
	}
}

// credential returns the process attributes that run a child as the named
// user (directly, with no runuser or su between, whose own start-up would
// be timed with the tool), or nil for the current user.
func credential(name string) (*syscall.SysProcAttr, error) {
	if name == "" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, err
	}
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}, nil
}

// dropCaches empties the page cache when the process may (root), so every
// batch reads its files from disk.
func dropCaches() {
	_ = exec.Command("sync").Run()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200)
}

func percentile(xs []float64, p float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	i := int(float64(len(s)-1)*p/100 + 0.5)
	return s[i]
}

func mean(xs []float64) float64 {
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
