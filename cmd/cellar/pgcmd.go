package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cloud"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/pg"
	"github.com/cellar-backup/cellar/wal"
)

// connect opens a connection to the server's PostgreSQL with conninfo.
func connect(ctx context.Context, srv *config.Server) (*pgx.Conn, error) {
	if srv.Conninfo == "" {
		return nil, fmt.Errorf("server %s has no conninfo: set conninfo = host=... user=... dbname=postgres", srv.Name)
	}
	cfg, err := pg.ParseConninfo(srv.Conninfo)
	if err != nil {
		return nil, fmt.Errorf("conninfo of server %s: %v", srv.Name, config.RedactConninfo(err.Error()))
	}
	conn, err := pg.Connect(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL of server %s: %w", srv.Name, err)
	}
	return conn, nil
}

func switchWALCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "switch-wal",
		Usage:     "force PostgreSQL to close the current WAL segment; with --archive, wait until it is in the repository",
		ArgsUsage: "SERVER",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "archive", Usage: "wait until the closed segment is archived"},
			&cli.DurationFlag{Name: "archive-timeout", Value: 30 * time.Second, Usage: "how long --archive waits"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("switch-wal takes exactly one SERVER argument")
			}
			srv, err := st.server(c)
			if err != nil {
				return err
			}
			ctx := c.Context
			conn, err := connect(ctx, srv)
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			name, err := pg.SwitchWAL(ctx, conn)
			if err != nil {
				return fmt.Errorf("switching WAL on server %s: %w", srv.Name, err)
			}
			fmt.Fprintf(st.stdout, "The WAL file %s has been closed on server %s\n", name, srv.Name)
			if !c.Bool("archive") {
				return nil
			}
			store, err := st.openStore(ctx, srv)
			if err != nil {
				return err
			}
			defer store.Close()
			limit := c.Duration("archive-timeout")
			wctx, cancel := context.WithTimeout(ctx, limit)
			defer cancel()
			if err := wal.WaitArchived(wctx, store, srv.Name, name); err != nil {
				if wctx.Err() != nil {
					return fmt.Errorf("the WAL file %s was not archived within %v: check archive_command and `cellar check %s`", name, limit, srv.Name)
				}
				return err
			}
			fmt.Fprintf(st.stdout, "The WAL file %s has been archived\n", name)
			return nil
		},
	}
}

func listWALCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:      "list-wal",
		Usage:     "archived WAL per timeline: first, last, count, size, gaps",
		ArgsUsage: "SERVER",
		Action: func(c *cli.Context) error {
			return st.storeCommand(c, 1, "list-wal takes exactly one SERVER argument", func(srv *config.Server, store cloud.Storage) error {
				tls, err := wal.ListWAL(c.Context, store, srv.Name)
				if err != nil {
					return err
				}
				if st.format == "json" {
					return st.printJSON(tls)
				}
				if len(tls) == 0 {
					fmt.Fprintf(st.stdout, "No WAL archived for server %s\n", srv.Name)
					return nil
				}
				for _, t := range tls {
					fmt.Fprintf(st.stdout, "Timeline %d:", t.Timeline)
					if t.Segments > 0 {
						fmt.Fprintf(st.stdout, " %s .. %s, %d segments, %s (stored %s, ratio %.1f)",
							t.First, t.Last, t.Segments, humanSize(t.Size), humanSize(t.StoredSize), t.Ratio)
					}
					var extra []string
					if t.History {
						extra = append(extra, "history file")
					}
					if t.Partial > 0 {
						extra = append(extra, fmt.Sprintf("%d partial", t.Partial))
					}
					if t.Backup > 0 {
						extra = append(extra, fmt.Sprintf("%d backup labels", t.Backup))
					}
					if len(t.Gaps) == 0 {
						extra = append(extra, "no gaps")
					}
					for _, g := range t.Gaps {
						extra = append(extra, fmt.Sprintf("GAP %s .. %s (%d segments)", g.From, g.To, g.Count))
					}
					fmt.Fprintf(st.stdout, " %s\n", strings.Join(extra, ", "))
				}
				return nil
			})
		},
	}
}

// humanSize prints a byte count with one decimal in binary units.
var humanSize = catalog.HumanSize
