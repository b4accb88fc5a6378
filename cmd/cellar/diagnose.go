package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cellar-backup/cellar/cmd/cellar/internal/config"
	"github.com/cellar-backup/cellar/health"
)

// diagnosis is the document diagnose prints: everything a bug report
// needs, and never a secret.
type diagnosis struct {
	Cellar struct {
		Version       string `json:"version"`
		Commit        string `json:"commit"`
		VersionString string `json:"version_string"`
		Go            string `json:"go"`
		OS            string `json:"os"`
		Arch          string `json:"arch"`
	} `json:"cellar"`
	Time          time.Time                   `json:"time"`
	Host          string                      `json:"host"`
	Configuration diagnoseConfig              `json:"configuration"`
	Environment   map[string]string           `json:"environment"`
	Servers       map[string]*diagnoseServer  `json:"servers"`
	PostgreSQL    map[string]diagnoseBinaries `json:"postgresql"`
}

type diagnoseConfig struct {
	Files []string `json:"files"`
	Error string   `json:"error,omitempty"`
	// Servers are each server's effective settings, secrets redacted as
	// show-server shows them; Sources where those not by default come
	// from.
	Servers map[string]map[string]string `json:"servers"`
	Sources map[string]map[string]string `json:"sources"`
}

type diagnoseServer struct {
	Active bool `json:"active"`
	// Error says why the repository could not be read.
	Error          string                 `json:"error,omitempty"`
	Check          []health.Result        `json:"check"`
	Status         health.Status          `json:"status"`
	Catalog        *health.CatalogSummary `json:"catalog"`
	RecentFailures []health.Failure       `json:"recent_failures"`
}

// diagnoseBinaries is what a PostgreSQL program says of its version.
type diagnoseBinaries struct {
	Path    string `json:"path"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

func diagnoseCommand(st *state) *cli.Command {
	return &cli.Command{
		Name:  "diagnose",
		Usage: "print what a bug report needs as one JSON document: versions, the configuration (secrets masked), every server's check and status, the catalog and recent failures",
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usagef("diagnose takes no arguments")
			}
			text, err := st.scrubbedJSON(st.diagnose(c))
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(st.stdout, maskText(text))
			return err
		},
	}
}

func (st *state) diagnose(c *cli.Context) *diagnosis {
	d := &diagnosis{Time: st.now().UTC(), Servers: map[string]*diagnoseServer{}}
	d.Cellar.Version, d.Cellar.VersionString = version, versionString()
	d.Cellar.Commit = commit
	if d.Cellar.Commit == "" {
		_, c, _ := strings.Cut(d.Cellar.VersionString, "(commit ")
		d.Cellar.Commit = strings.TrimSuffix(c, ")")
	}
	d.Cellar.Go, d.Cellar.OS, d.Cellar.Arch = runtime.Version(), runtime.GOOS, runtime.GOARCH
	d.Host, _ = os.Hostname()
	d.Environment = st.diagnoseEnvironment()
	d.Configuration = diagnoseConfig{Files: []string{}, Servers: map[string]map[string]string{}, Sources: map[string]map[string]string{}}
	cfg, err := st.config(c)
	if err != nil {
		d.Configuration.Error = config.RedactConninfo(oneLine(err.Error()))
		d.PostgreSQL = postgresBinaries(c.Context, nil)
		return d
	}
	d.Configuration.Files = append(d.Configuration.Files, cfg.Files...)
	servers := cfg.Servers()
	for _, srv := range servers {
		// Every server's secrets are known before anything is read.
		st.secrets = append(st.secrets, srv.Secrets()...)
	}
	var binDirs []string
	for _, srv := range servers {
		values, sources := map[string]string{}, map[string]string{}
		for _, s := range srv.Settings() {
			values[s.Name] = s.Value
			if s.Source != "default" {
				sources[s.Name] = s.Source
			}
		}
		d.Configuration.Servers[srv.Name], d.Configuration.Sources[srv.Name] = values, sources
		d.Servers[srv.Name] = st.diagnoseServer(c.Context, srv)
		if srv.PGBinDir != "" && !slices.Contains(binDirs, srv.PGBinDir) {
			binDirs = append(binDirs, srv.PGBinDir)
		}
	}
	d.PostgreSQL = postgresBinaries(c.Context, binDirs)
	return d
}

// diagnoseServer runs a server's checks and reads its status.
func (st *state) diagnoseServer(ctx context.Context, srv *config.Server) *diagnoseServer {
	out := &diagnoseServer{Active: srv.Active}
	out.Check = health.Run(ctx, st.healthOptions(srv))
	for i := range out.Check {
		out.Check[i].Hint = oneLine(out.Check[i].Hint)
	}
	s, err := st.readStatus(ctx, srv)
	out.Status, out.RecentFailures = s, s.RecentFailures
	if err != nil {
		out.Error = oneLine(err.Error())
	} else {
		sum := s.Summary()
		out.Catalog = &sum
	}
	return out
}

// Environment variables that diagnose shows: Cellar's own, the cloud
// providers', libpq's and Go's runtime's (shownVariables). Of the
// providers' and libpq's, only the values of shownVariables (none a
// secret) are shown, every other is ***; of Cellar's, every value but of
// a secret setting (a conninfo's password is redacted).
var (
	variablePrefixes = []string{"CELLAR_", "AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "PG"}
	shownVariables   = map[string]bool{
		"AWS_REGION": true, "AWS_DEFAULT_REGION": true, "AWS_PROFILE": true, "AWS_ENDPOINT_URL": true, "AWS_ENDPOINT_URL_S3": true,
		"AWS_CONFIG_FILE": true, "AWS_SHARED_CREDENTIALS_FILE": true, "AWS_CA_BUNDLE": true, "AWS_ROLE_ARN": true,
		"AWS_WEB_IDENTITY_TOKEN_FILE": true, "AWS_EC2_METADATA_DISABLED": true, "AWS_USE_FIPS_ENDPOINT": true,
		"AZURE_STORAGE_ACCOUNT": true, "AZURE_CLIENT_ID": true, "AZURE_TENANT_ID": true, "AZURE_AUTHORITY_HOST": true,
		"AZURE_FEDERATED_TOKEN_FILE": true, "AZURE_CLIENT_CERTIFICATE_PATH": true,
		"GOOGLE_APPLICATION_CREDENTIALS": true, "GOOGLE_CLOUD_PROJECT": true, "STORAGE_EMULATOR_HOST": true,
		"PGHOST": true, "PGHOSTADDR": true, "PGPORT": true, "PGUSER": true, "PGDATABASE": true, "PGSSLMODE": true,
		"PGPASSFILE": true, "PGAPPNAME": true, "PGCONNECT_TIMEOUT": true, "PGSERVICE": true, "PGSERVICEFILE": true,
		"PGSSLROOTCERT": true, "PGSSLCERT": true, "PGSSLKEY": true, "PGTZ": true, "PGDATA": true,
		"GOGC": true, "GOMEMLIMIT": true, "GOMAXPROCS": true, "GODEBUG": true,
	}
	secretName = regexp.MustCompile(`(?i)KEY|TOKEN|SECRET|PASSWORD|PASSPHRASE|CREDENTIAL|SAS|SIG`)
)

// diagnoseEnvironment lists the variables set that concern Cellar, with
// every secret masked; masked values are scrubbed wherever else they
// occur.
func (st *state) diagnoseEnvironment() map[string]string {
	out := map[string]string{}
	for _, kv := range st.env {
		k, v, _ := strings.Cut(kv, "=")
		relevant := shownVariables[k]
		for _, p := range variablePrefixes {
			relevant = relevant || strings.HasPrefix(k, p)
		}
		if !relevant {
			continue
		}
		shown := "***"
		switch setting, ok := strings.CutPrefix(k, "CELLAR_"); {
		case ok && strings.Contains(setting, "CONNINFO"):
			shown = config.RedactConninfo(v)
		case ok && setting == "REPOSITORY":
			if u, err := url.Parse(v); err == nil {
				shown = u.Redacted()
			}
		case ok && !secretName.MatchString(setting):
			shown = v
		case shownVariables[k]:
			shown = v
		}
		if shown != v {
			st.secrets = append(st.secrets, v)
		}
		out[k] = shown
	}
	return out
}

// postgresBinaries asks pg_config on PATH, and postgres in each pg_bin_dir,
// for its version.
func postgresBinaries(ctx context.Context, binDirs []string) map[string]diagnoseBinaries {
	out := map[string]diagnoseBinaries{}
	ask := func(key, path string) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, path, "--version").Output()
		r := diagnoseBinaries{Path: path, Version: strings.TrimSpace(string(b))}
		if err != nil {
			r.Error = err.Error()
		}
		out[key] = r
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		ask("pg_config", p)
	}
	sort.Strings(binDirs)
	for _, dir := range binDirs {
		ask(dir, filepath.Join(dir, "postgres"))
	}
	return out
}

var (
	ageSecretKey = regexp.MustCompile(`AGE-SECRET-KEY-1[0-9A-Za-z]+`)
	// secretAssignment is NAME=value with a name that says secret, as in
	// an archive_command that sets a variable or a connection string; the
	// value stops before a quote, a backslash (a JSON escape) or a
	// separator.
	secretAssignment = regexp.MustCompile(`(?i)\b([A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|SIG))\s*=\s*[^\s"'\\&;,]+`)
)

// maskText masks what looks like a secret in a JSON document's text:
// private age keys, and NAME=value with a secret name (a conninfo's
// password, a variable set in archive_command). What it replaces holds no
// quote or backslash: the document stays valid JSON.
func maskText(s string) string {
	s = ageSecretKey.ReplaceAllString(s, "***")
	return secretAssignment.ReplaceAllString(s, "${1}=***")
}
