// Package config reads Cellar's configuration: an INI file in Barman's
// style (a [cellar] section of global settings and one section per server,
// each of which may override any global setting), optional extra files in
// a directory, and CELLAR_<SETTING> environment variables, which win over
// the files. Everything is typed and validated once, when it is loaded; an
// error names the file, the section and the setting.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/ini.v1"

	"github.com/cellar-backup/cellar/catalog"
	"github.com/cellar-backup/cellar/cmd/cellar/internal/repo"
)

// Default locations, used when neither --config nor CELLAR_CONFIG is given.
const (
	DefaultFile = "/etc/cellar.conf"
	DefaultDir  = "/etc/cellar.d"
	globalName  = "cellar"
	envPrefix   = "CELLAR_"
)

// Server holds the effective settings of one server. The `ini` tag names
// the setting; `default` gives its value when nothing sets it; `secret`
// marks a value that is never printed.
type Server struct {
	Name string `ini:"-"`

	Description string `ini:"description"`
	Active      bool   `ini:"active" default:"true"`

	Repository        string `ini:"repository"`
	Compression       string `ini:"compression" default:"zstd" enum:"zstd,s2,gzip,none"`
	CompressionLevel  int    `ini:"compression_level" default:"0" min:"0" max:"22"`
	Parallel          int    `ini:"parallel" default:"4" min:"1" max:"256"`
	UploadPartSize    Size   `ini:"upload_part_size" default:"16MiB" min:"5242880" max:"5368709120"`
	UploadConcurrency int    `ini:"upload_concurrency" default:"4" min:"1" max:"64"`

	WALPushParallel int      `ini:"wal_push_parallel" default:"4" min:"1" max:"64"`
	WALSpoolDir     string   `ini:"wal_spool_dir"`
	WALPushTimeout  Duration `ini:"wal_push_timeout" default:"60s" min:"1" max:"86400"`
	WALFetchTimeout Duration `ini:"wal_fetch_timeout" default:"300s" min:"1" max:"86400"`

	PGData            string `ini:"pgdata"`
	Conninfo          string `ini:"conninfo" secret:"conninfo"`
	BackupMethod      string `ini:"backup_method" default:"local" enum:"local,stream"`
	StreamingConninfo string `ini:"streaming_conninfo" secret:"conninfo"`
	StreamingArchiver bool   `ini:"streaming_archiver" default:"off"`
	SlotName          string `ini:"slot_name" default:"cellar"`
	// StreamingArchiverName is receive-wal's application_name, the name
	// synchronous_standby_names lists to make commits wait for the
	// repository (Barman's setting).
	StreamingArchiverName   string   `ini:"streaming_archiver_name" default:"cellar_receive_wal"`
	StreamingUploadInterval Duration `ini:"streaming_upload_interval" default:"10s" min:"1" max:"3600"`
	StreamingSyncInterval   Duration `ini:"streaming_sync_interval" default:"0s" min:"0" max:"60"`
	StreamingLagMax         Size     `ini:"streaming_lag_max" default:"0" min:"0" max:"1099511627776"`
	PrimaryConninfo         string   `ini:"primary_conninfo" secret:"conninfo"`

	// Encryption seals everything stored (but the server's identity) with
	// age to EncryptionRecipients; EncryptionIdentityFile names the
	// private keys that open it, needed only where the repository is
	// read back (wal-fetch, restore, verify).
	Encryption             string `ini:"encryption" default:"none" enum:"none,age"`
	EncryptionRecipients   string `ini:"encryption_recipients"`
	EncryptionIdentityFile string `ini:"encryption_identity_file"`
	keys                   *catalog.Keyring

	BackupPartSize Size `ini:"backup_part_size" default:"512MiB" min:"1048576" max:"107374182400"`
	// BackupType is the type of a backup taken without --type.
	BackupType string `ini:"backup_type" default:"full" enum:"full,incr,diff"`
	// IncrementalMaxChain is the most backups a restore reads: a backup
	// that would make a longer chain is a full one.
	IncrementalMaxChain int      `ini:"incremental_max_chain" default:"7" min:"1" max:"100"`
	BackupWALTimeout    Duration `ini:"backup_wal_timeout" default:"300s" min:"1" max:"604800"`
	// ImmediateCheckpoint starts backups with an immediate checkpoint, as
	// --fast does (Barman's setting).
	ImmediateCheckpoint  bool   `ini:"immediate_checkpoint" default:"off"`
	LastBackupMaximumAge string `ini:"last_backup_maximum_age"`
	LockDirectory        string `ini:"lock_directory" default:"/tmp"`

	// Restore drills (cellar drill, restore --verify-start).
	// DrillDirectory holds the drills' scratch directories; DrillSchedule
	// (an age, e.g. 7 DAYS) makes cron start one when the last is that
	// old; check fails when the last good one is older than
	// DrillMaximumAge, or the last one failed. PGBinDir holds the
	// PostgreSQL binaries a drill starts; empty means pg_config's or the
	// usual paths of the backup's major version.
	DrillQuery      string   `ini:"drill_query" default:"select 1"`
	DrillAmcheck    bool     `ini:"drill_amcheck" default:"off"`
	DrillDirectory  string   `ini:"drill_directory" default:"/var/tmp"`
	DrillSchedule   string   `ini:"drill_schedule"`
	DrillMaximumAge string   `ini:"drill_maximum_age"`
	DrillTimeout    Duration `ini:"drill_timeout" default:"1h" min:"1" max:"604800"`
	PGBinDir        string   `ini:"pg_bin_dir"`

	RetentionPolicy    string `ini:"retention_policy"`
	MinimumRedundancy  int    `ini:"minimum_redundancy" default:"0" min:"0" max:"10000"`
	WALRetentionPolicy string `ini:"wal_retention_policy" default:"main" enum:"main"`
	// OrphanAge is how old the remains of a killed backup must be before
	// cron removes them, in last_backup_maximum_age's form.
	OrphanAge string `ini:"orphan_age" default:"1 DAYS"`

	S3Endpoint       string `ini:"s3_endpoint"`
	S3Region         string `ini:"s3_region"`
	S3ForcePathStyle bool   `ini:"s3_force_path_style" default:"false"`
	GCSEndpoint      string `ini:"gcs_endpoint"`
	AzureAccount     string `ini:"azure_account"`
	AzureEndpoint    string `ini:"azure_endpoint"`
	AzureKey         string `ini:"azure_key" secret:"value"`
	AzureSASToken    string `ini:"azure_sas_token" secret:"value"`

	// Where each setting came from, for show-server and error messages.
	sources map[string]string
}

// Size is a byte count written as 16MiB, 64MB, 1GiB or a plain number.
type Size int64

// Duration is a time span written as 60s, 5m, 1h30m or a plain number of
// seconds. Its min and max tags are in seconds.
type Duration time.Duration

// Config is the loaded configuration.
type Config struct {
	// Files that were read, in order. Empty when no file exists and all
	// settings come from the environment.
	Files   []string
	servers map[string]*Server
	global  *Server
	// Path is the explicit configuration file (--config or CELLAR_CONFIG),
	// empty when the defaults were used. restore_command repeats it.
	Path string
}

type rawValue struct{ value, source string }

// Error is a configuration error. The command exits with status 2.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func errorf(format string, args ...any) error { return &Error{Msg: fmt.Sprintf(format, args...)} }

var serverName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Load reads the configuration. path is the explicit file (from --config
// or CELLAR_CONFIG) or empty for the defaults; env is the process
// environment as from os.Environ.
func Load(path string, env []string) (*Config, error) {
	return load(path, DefaultFile, DefaultDir, env)
}

func load(path, defaultFile, defaultDir string, env []string) (*Config, error) {
	c := &Config{servers: map[string]*Server{}, Path: path}
	var files []string
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return nil, errorf("configuration file %s: %v (fix --config or CELLAR_CONFIG)", path, unwrapPathError(err))
		}
		files = []string{path}
	} else {
		if _, err := os.Stat(defaultFile); err == nil {
			files = append(files, defaultFile)
		}
		more, _ := filepath.Glob(filepath.Join(defaultDir, "*.conf"))
		sort.Strings(more)
		files = append(files, more...)
	}
	c.Files = files

	// Raw values: global settings, then each server's own.
	global := map[string]rawValue{}
	sections := map[string]map[string]rawValue{}
	sectionFile := map[string]string{}
	var order []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, errorf("configuration file %s: %v", f, unwrapPathError(err))
		}
		file, err := ini.LoadSources(ini.LoadOptions{
			SpaceBeforeInlineComment:   true,
			AllowPythonMultilineValues: false,
			Insensitive:                false,
		}, data)
		if err != nil {
			return nil, errorf("configuration file %s: %v", f, err)
		}
		for _, sec := range file.Sections() {
			name := sec.Name()
			if name == ini.DefaultSection {
				if len(sec.Keys()) > 0 {
					return nil, errorf("%s: setting %q is outside any section: put it under [cellar] or a server's section", f, sec.Keys()[0].Name())
				}
				continue
			}
			var dst map[string]rawValue
			if name == globalName {
				dst = global
			} else {
				if !serverName.MatchString(name) || name == "all" {
					return nil, errorf("%s: [%s] is not a valid server name: use letters, digits, '_', '.' and '-'", f, name)
				}
				if prev, ok := sectionFile[name]; ok && prev != f {
					return nil, errorf("%s: server [%s] is already defined in %s", f, name, prev)
				}
				if _, ok := sections[name]; !ok {
					sections[name] = map[string]rawValue{}
					sectionFile[name] = f
					order = append(order, name)
				}
				dst = sections[name]
			}
			for _, k := range sec.Keys() {
				key := strings.ToLower(strings.TrimSpace(k.Name()))
				if _, ok := settingIndex[key]; !ok {
					return nil, errorf("%s: [%s] %s: unknown setting%s", f, name, k.Name(), suggest(key))
				}
				dst[key] = rawValue{k.Value(), fmt.Sprintf("%s [%s]", f, name)}
			}
		}
	}
	envValues := map[string]rawValue{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, envPrefix) {
			continue
		}
		key := strings.ToLower(strings.TrimPrefix(k, envPrefix))
		if _, known := settingIndex[key]; known {
			envValues[key] = rawValue{v, "environment " + k}
		}
	}

	build := func(name string, own map[string]rawValue) (*Server, error) {
		isGlobal := own == nil
		s := &Server{Name: name, sources: map[string]string{}}
		for _, def := range settings {
			value, source := def.dflt, "default"
			for _, layer := range []map[string]rawValue{global, own, envValues} {
				if rv, ok := layer[def.name]; ok {
					value, source = rv.value, rv.source
				}
			}
			if err := def.set(s, value); err != nil {
				return nil, errorf("%s: %s: %v", source, def.name, err)
			}
			s.sources[def.name] = source
		}
		if err := s.validate(!isGlobal); err != nil {
			return nil, err
		}
		return s, nil
	}
	// The global settings are checked on their own too, so that an error
	// there is reported even when no server is defined.
	var err error
	if c.global, err = build(globalName, nil); err != nil {
		return nil, err
	}
	for _, name := range order {
		s, err := build(name, sections[name])
		if err != nil {
			return nil, err
		}
		c.servers[name] = s
	}
	return c, nil
}

// Servers returns the configured servers in name order.
func (c *Config) Servers() []*Server {
	out := make([]*Server, 0, len(c.servers))
	for _, s := range c.servers {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Server returns the named server. When no configuration file exists at
// all, any valid name is accepted and takes the global settings from the
// environment, so that a container needs no file.
func (c *Config) Server(name string) (*Server, error) {
	if s, ok := c.servers[name]; ok {
		return s, nil
	}
	if len(c.Files) == 0 {
		if !serverName.MatchString(name) {
			return nil, errorf("%q is not a valid server name", name)
		}
		s := *c.global
		s.Name = name
		if s.Repository == "" {
			return nil, errorf("server %s: no repository is set: set CELLAR_REPOSITORY or write %s", name, DefaultFile)
		}
		return &s, nil
	}
	names := make([]string, 0, len(c.servers))
	for n := range c.servers {
		names = append(names, n)
	}
	sort.Strings(names)
	known := "none are defined"
	if len(names) > 0 {
		known = "known servers: " + strings.Join(names, ", ")
	}
	return nil, errorf("unknown server %q in %s (%s)", name, strings.Join(c.Files, ", "), known)
}

func (s *Server) validate(requireRepository bool) error {
	if s.Repository == "" {
		if !requireRepository {
			return nil
		}
		return errorf("server [%s]: no repository is set: add repository = file:///path, s3://bucket/prefix, gs://bucket/prefix or azure://container/prefix to [%s] or [cellar]", s.Name, s.Name)
	}
	if _, err := repo.Parse(s.Repository); err != nil {
		return errorf("%s: repository: %v", s.sources["repository"], err)
	}
	if s.RetentionPolicy != "" {
		if _, err := ParseRetentionPolicy(s.RetentionPolicy); err != nil {
			return errorf("%s: retention_policy: %v", s.sources["retention_policy"], err)
		}
	}
	if _, err := ParseAge(s.OrphanAge); err != nil {
		return errorf("%s: orphan_age: %v", s.sources["orphan_age"], err)
	}
	for _, a := range []struct{ name, value string }{{"last_backup_maximum_age", s.LastBackupMaximumAge}, {"drill_schedule", s.DrillSchedule}, {"drill_maximum_age", s.DrillMaximumAge}} {
		if a.value == "" {
			continue
		}
		if _, err := ParseAge(a.value); err != nil {
			return errorf("%s: %s: %v", s.sources[a.name], a.name, err)
		}
	}
	if strings.TrimSpace(s.DrillQuery) == "" {
		return errorf("%s: drill_query is empty: give the query a drill runs on the restored server (e.g. select 1)", s.sources["drill_query"])
	}
	if !filepath.IsAbs(s.DrillDirectory) {
		return errorf("%s: drill_directory %q is not an absolute path", s.sources["drill_directory"], s.DrillDirectory)
	}
	if s.Encryption == "age" && strings.TrimSpace(s.EncryptionRecipients) == "" {
		return errorf("%s: encryption = age needs encryption_recipients: the public keys to encrypt to (cellar keygen prints one)", s.sources["encryption"])
	}
	if s.EncryptionRecipients != "" || s.EncryptionIdentityFile != "" {
		keys, err := catalog.NewKeyring(s.EncryptionRecipients, s.EncryptionIdentityFile)
		if err != nil {
			return errorf("server [%s]: %v", s.Name, err)
		}
		s.keys = keys
	}
	for _, u := range []struct{ name, value string }{{"s3_endpoint", s.S3Endpoint}, {"azure_endpoint", s.AzureEndpoint}, {"gcs_endpoint", s.GCSEndpoint}} {
		if u.value == "" {
			continue
		}
		if err := repo.CheckEndpoint(u.value); err != nil {
			return errorf("%s: %s: %v", s.sources[u.name], u.name, err)
		}
	}
	return nil
}

// RetentionPolicy is a parsed retention_policy.
type RetentionPolicy struct {
	Redundancy int           // REDUNDANCY n; 0 when a window is set
	Window     time.Duration // RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS
	Text       string
}

var (
	redundancyRe = regexp.MustCompile(`^REDUNDANCY\s+(\d+)$`)
	windowRe     = regexp.MustCompile(`^RECOVERY\s+WINDOW\s+OF\s+(\d+)\s+(DAY|DAYS|WEEK|WEEKS|MONTH|MONTHS)$`)
)

// ParseRetentionPolicy parses "REDUNDANCY n" or
// "RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS" (case-insensitive).
func ParseRetentionPolicy(v string) (RetentionPolicy, error) {
	u := strings.ToUpper(strings.Join(strings.Fields(v), " "))
	if m := redundancyRe.FindStringSubmatch(u); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n < 1 {
			return RetentionPolicy{}, fmt.Errorf("%q: redundancy must be at least 1", v)
		}
		return RetentionPolicy{Redundancy: n, Text: u}, nil
	}
	if m := windowRe.FindStringSubmatch(u); m != nil {
		n, err := strconv.Atoi(m[1])
		if err != nil || n < 1 {
			return RetentionPolicy{}, fmt.Errorf("%q: the window must be at least 1", v)
		}
		unit := 24 * time.Hour
		switch m[2][0] {
		case 'W':
			unit *= 7
		case 'M':
			unit *= 31
		}
		return RetentionPolicy{Window: time.Duration(n) * unit, Text: u}, nil
	}
	return RetentionPolicy{}, fmt.Errorf("%q is not a policy: use REDUNDANCY n or RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS", v)
}

var ageRe = regexp.MustCompile(`^(\d+)\s+(MINUTE|MINUTES|HOUR|HOURS|DAY|DAYS|WEEK|WEEKS|MONTH|MONTHS)$`)

// ParseAge parses an age in Barman's form, "n MINUTES|HOURS|DAYS|WEEKS|MONTHS"
// (case-insensitive), as last_backup_maximum_age = 1 DAYS.
func ParseAge(v string) (time.Duration, error) {
	m := ageRe.FindStringSubmatch(strings.ToUpper(strings.Join(strings.Fields(v), " ")))
	if m == nil {
		return 0, fmt.Errorf("%q is not an age: write e.g. 1 DAYS, 12 HOURS or 2 WEEKS", v)
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%q: the age must be at least 1", v)
	}
	unit := time.Hour
	switch m[2][:2] {
	case "MI":
		unit = time.Minute
	case "MO":
		unit = 31 * 24 * time.Hour
	}
	switch m[2][0] {
	case 'D':
		unit = 24 * time.Hour
	case 'W':
		unit = 7 * 24 * time.Hour
	}
	return time.Duration(n) * unit, nil
}

// Setting is one effective setting, for show-server.
type Setting struct {
	Name, Value, Source string
}

// Settings returns every effective setting with secrets redacted.
func (s *Server) Settings() []Setting {
	out := make([]Setting, 0, len(settings))
	for _, def := range settings {
		out = append(out, Setting{Name: def.name, Value: def.show(s), Source: s.sources[def.name]})
	}
	return out
}

// Secrets returns the secret values in this server's settings, so that a
// caller can scrub them from any text before it is printed.
func (s *Server) Secrets() []string {
	var out []string
	for _, def := range settings {
		if def.secret == "" {
			continue
		}
		v := reflect.ValueOf(s).Elem().Field(def.field).String()
		if def.secret == "conninfo" {
			out = append(out, conninfoSecrets(v)...)
		} else if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Show returns one effective setting as show-server prints it.
func (s *Server) Show(name string) string {
	if d, ok := settingIndex[name]; ok {
		return d.show(s)
	}
	return ""
}
