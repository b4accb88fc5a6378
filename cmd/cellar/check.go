package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/lockfile"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
	"github.com/cellar-backup/cellar/health"
	"github.com/cellar-backup/cellar/pg"
)

// checkResult is one line of `cellar check`.
type checkResult = health.Result

func checkCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "check every precondition for backup and archiving; exit 0 only if all are OK",
		ArgsUsage: "SERVER",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "nagios", Usage: "print one line in the Nagios plugin format; exit 0 OK, 2 CRITICAL"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("check takes exactly one SERVER argument")
			}
			name := c.Args().First()
			srv, err := st.server(c)
			var results []checkResult
			code := exitOK
			if err != nil {
				var ce *config.Error
				if !errors.As(err, &ce) {
					return err
				}
				// A configuration error is a failed check and, as for every
				// command, exit status 2.
				results = append(results, checkResult{Name: "configuration", Status: health.Failed, Hint: st.scrub(oneLine(err.Error()))})
				code = exitUsage
			} else {
				results = append(results, checkResult{Name: "configuration", Status: "OK"})
				results = append(results, health.Run(c.Context, st.healthOptions(srv))...)
				for i := range results {
					results[i].Hint = st.scrub(oneLine(results[i].Hint))
				}
			}
			failed := health.Failures(results)
			if failed > 0 && code == exitOK {
				code = exitFailure
			}
			switch {
			case c.Bool("nagios"):
				printNagios(st.stdout, name, results, failed)
				if failed > 0 {
					code = 2 // Nagios CRITICAL
				}
			case st.format == "json":
				status := "OK"
				if failed > 0 {
					status = "FAILED"
				}
				if err := st.printJSON(map[string]any{"server": name, "status": status, "checks": results}); err != nil {
					return err
				}
			default:
				for _, r := range results {
					if r.Status == "OK" {
						fmt.Fprintf(st.stdout, "%s: OK\n", r.Name)
					} else {
						fmt.Fprintf(st.stdout, "%s: FAILED (%s)\n", r.Name, r.Hint)
					}
				}
			}
			if code != exitOK {
				return &exitError{code: code, silent: true}
			}
			return nil
		},
	}
}

func printNagios(w io.Writer, name string, results []checkResult, failed int) {
	if failed == 0 {
		fmt.Fprintf(w, "CELLAR OK - server %s: %d checks OK\n", name, len(results))
		return
	}
	var bad []string
	for _, r := range results {
		if r.Status != "OK" {
			bad = append(bad, r.Name+": "+r.Hint)
		}
	}
	fmt.Fprintf(w, "CELLAR CRITICAL - server %s has %d failed checks: %s\n", name, failed, strings.Join(bad, "; "))
}

// healthOptions are the checks of a server as its settings call for.
func (st *state) healthOptions(srv *config.Server) health.Options {
	opts := st.repoOptions(srv)
	s := health.Settings{
		Server: srv.Name, SQL: srv.Conninfo != "", Streaming: srv.StreamingConninfo != "" || srv.StreamingArchiver,
		BackupMethod: srv.BackupMethod, PGData: srv.PGData, StreamingArchiver: srv.StreamingArchiver,
		SlotName: srv.SlotName, StreamingLagMax: int64(srv.StreamingLagMax),
		LastBackupMaximumAge: srv.LastBackupMaximumAge, MinimumRedundancy: srv.MinimumRedundancy,
		RetentionPolicy: srv.RetentionPolicy,
		Encryption:      srv.Encryption, Identity: srv.EncryptionIdentityFile != "",
	}
	if s.LastBackupMaximumAge != "" {
		s.MaximumAge, s.AgeErr = config.ParseAge(srv.LastBackupMaximumAge)
	}
	if srv.DrillMaximumAge != "" {
		s.DrillMaximumAge = srv.DrillMaximumAge
		s.DrillAge, _ = config.ParseAge(srv.DrillMaximumAge) // checked when loaded
	}
	s.Policy, s.PolicyErr = policyOf(srv)
	o := health.Options{
		Settings:  s,
		OpenStore: func(ctx context.Context) (cloud.Storage, error) { return repo.Open(ctx, opts) },
		Where:     repo.Endpoint(opts),
		Connect:   func(ctx context.Context) (*pgx.Conn, error) { return connect(ctx, srv) },
		DialReplication: func(ctx context.Context) (*pg.ReplConn, error) {
			conninfo, err := streamingConninfo(srv)
			if err != nil {
				return nil, err
			}
			return pg.DialReplication(ctx, conninfo, "cellar")
		},
		ReadCatalog: func(ctx context.Context, store cloud.Storage) (*catalog.Catalog, error) {
			return st.readCatalog(ctx, srv, store, true)
		},
		ReceiveWALRunning: func() bool { _, running := lockHolderOf(srv, "receive-wal"); return running },
		Hint:              func(msg string) { st.log.Info("hint: " + st.scrub(msg)) },
		Now:               st.now,
	}
	if r := checkLockDirectory(srv); r.Status != health.OK {
		o.Host = append(o.Host, r)
	}
	return o
}

// checkLockDirectory checks that lock_directory exists; the item is shown
// only when it fails. Whether this user may write it is not checked:
// monitoring only looks at locks, and the users who take them are told by
// their own commands.
func checkLockDirectory(srv *config.Server) checkResult {
	const name = "lock directory"
	var d *lockfile.DirError
	if err := lockfile.CheckDir(srv.LockDirectory); errors.As(err, &d) && !errors.Is(err, lockfile.ErrNotWritable) {
		return checkResult{Name: name, Status: health.Failed, Hint: "lock_directory " + d.Error()}
	}
	return checkResult{Name: name, Status: health.OK}
}
