package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/progress"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
)

// state is what one invocation shares between the app and its commands.
type state struct {
	env            []string
	stdout, stderr io.Writer

	format  string
	quiet   bool
	log     *slog.Logger
	cfg     *config.Config
	secrets []string
}

func (st *state) getenv(name string) string {
	for _, kv := range st.env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

func newApp(st *state) *cli.App {
	var unknownCommand string
	app := &cli.App{
		Name:      "cellar",
		Usage:     "backup and recovery manager for PostgreSQL, with WAL and base backups in S3, GCS, Azure Blob or a local directory",
		Version:   versionString(),
		Writer:    st.stdout,
		ErrWriter: st.stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "configuration `FILE` (default /etc/cellar.conf and /etc/cellar.d/*.conf)"},
			&cli.StringFlag{Name: "format", Aliases: []string{"f"}, Value: "text", Usage: "output format: text or json"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only warnings and errors"},
			&cli.BoolFlag{Name: "debug", Aliases: []string{"d"}, Usage: "print debugging messages"},
		},
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {},
		CommandNotFound: func(_ *cli.Context, name string) { unknownCommand = name },
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usagef("%v (see cellar --help)", err)
		},
		Before: func(c *cli.Context) error {
			st.format = c.String("format")
			if st.format != "text" && st.format != "json" {
				return usagef("--format %q: use text or json", st.format)
			}
			st.quiet = c.Bool("quiet")
			level := slog.LevelInfo
			if c.Bool("debug") {
				level = slog.LevelDebug
			} else if st.quiet {
				level = slog.LevelWarn
			}
			st.log = slog.New(slog.NewTextHandler(st.stderr, &slog.HandlerOptions{Level: level}))
			return nil
		},
		Commands: []*cli.Command{
			listServersCommand(st),
			showServerCommand(st),
			checkCommand(st),
			walPushCommand(st),
			walFetchCommand(st),
			walPrefetchCommand(st),
			listWALCommand(st),
			switchWALCommand(st),
			backupCommand(st),
			listBackupsCommand(st),
			showBackupCommand(st),
			restoreCommand(st),
			verifyCommand(st),
			retentionCommand(st),
			deleteCommand(st),
			keepCommand(st),
			cronCommand(st),
			receiveWALCommand(st),
			replicationStatusCommand(st),
			keygenCommand(st),
			drillCommand(st),
			listDrillsCommand(st),
			statusCommand(st),
			diagnoseCommand(st),
		},
	}
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}
	cli.VersionPrinter = func(c *cli.Context) {
		fmt.Fprintf(c.App.Writer, "cellar %s\n", c.App.Version)
	}
	orig := app.After
	app.After = func(c *cli.Context) error {
		if unknownCommand != "" {
			return usagef("unknown command %q (see cellar --help)", unknownCommand)
		}
		if orig != nil {
			return orig(c)
		}
		return nil
	}
	return app
}

// config loads the configuration once.
func (st *state) config(c *cli.Context) (*config.Config, error) {
	if st.cfg != nil {
		return st.cfg, nil
	}
	path := c.String("config")
	if path == "" {
		path = st.getenv("CELLAR_CONFIG")
	}
	cfg, err := config.Load(path, st.env)
	if err != nil {
		return nil, err
	}
	st.cfg = cfg
	return cfg, nil
}

// server loads the configuration and returns the server named by the
// command's first argument.
func (st *state) server(c *cli.Context) (*config.Server, error) {
	name := c.Args().First()
	if name == "" {
		return nil, usagef("%s needs a SERVER argument (see cellar %s --help)", c.Command.Name, c.Command.Name)
	}
	cfg, err := st.config(c)
	if err != nil {
		return nil, err
	}
	srv, err := cfg.Server(name)
	if err != nil {
		return nil, err
	}
	st.secrets = append(st.secrets, srv.Secrets()...)
	return srv, nil
}

// repoOptions maps a server's settings, and the providers' own environment
// variables for Azure, to the storage registry's options.
func (st *state) repoOptions(s *config.Server) repo.Options {
	o := s.RepoOptions(st.getenv)
	st.secrets = append(st.secrets, o.AzureKey, o.AzureSASToken, o.AzureConnectionString,
		st.getenv("AWS_SECRET_ACCESS_KEY"), st.getenv("AWS_SESSION_TOKEN"))
	return o
}

// scrub replaces every known secret in text with ***.
func (st *state) scrub(text string) string {
	for _, s := range st.secrets {
		if len(s) >= 4 {
			text = strings.ReplaceAll(text, s, "***")
		}
	}
	return text
}

// printJSON writes v as indented JSON.
func (st *state) printJSON(v any) error {
	enc := json.NewEncoder(st.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newProgress returns the renderer for a command's progress on stderr.
func (st *state) newProgress(what string) *progress.Bar {
	return progress.New(st.stderr, st.log, what, st.quiet)
}
