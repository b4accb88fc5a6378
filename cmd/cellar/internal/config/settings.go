package config

import (
	"fmt"
	"net/url"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// setting describes one field of Server, read from its struct tags.
type setting struct {
	name     string
	field    int
	dflt     string
	enum     []string
	min, max *int64
	secret   string // "", "value" or "conninfo"
}

var (
	settings     = buildSettings()
	settingIndex = func() map[string]*setting {
		m := map[string]*setting{}
		for i := range settings {
			m[settings[i].name] = &settings[i]
		}
		return m
	}()
)

func buildSettings() []setting {
	t := reflect.TypeFor[Server]()
	var out []setting
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("ini")
		if name == "" || name == "-" {
			continue
		}
		def := setting{name: name, field: i, dflt: f.Tag.Get("default"), secret: f.Tag.Get("secret")}
		if e := f.Tag.Get("enum"); e != "" {
			def.enum = strings.Split(e, ",")
		}
		for _, b := range []struct {
			tag string
			dst **int64
		}{{"min", &def.min}, {"max", &def.max}} {
			if v := f.Tag.Get(b.tag); v != "" {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					panic(fmt.Sprintf("config: bad %s tag on %s", b.tag, f.Name))
				}
				*b.dst = &n
			}
		}
		out = append(out, def)
	}
	return out
}

// set parses value into the field.
func (d *setting) set(s *Server, value string) error {
	value = strings.TrimSpace(value)
	v := reflect.ValueOf(s).Elem().Field(d.field)
	switch v.Interface().(type) {
	case string:
		if d.enum != nil && value != "" {
			value = strings.ToLower(value)
			ok := false
			for _, e := range d.enum {
				ok = ok || e == value
			}
			if !ok {
				return fmt.Errorf("%q is not one of %s", value, strings.Join(d.enum, ", "))
			}
		}
		v.SetString(value)
	case bool:
		b, err := parseBool(value)
		if err != nil {
			return err
		}
		v.SetBool(b)
	case int:
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", value)
		}
		if err := d.inRange(n, strconv.FormatInt); err != nil {
			return err
		}
		v.SetInt(n)
	case Size:
		n, err := ParseSize(value)
		if err != nil {
			return err
		}
		if err := d.inRange(n, func(n int64, _ int) string { return FormatSize(n) }); err != nil {
			return err
		}
		v.SetInt(n)
	case Duration:
		dur, err := ParseDuration(value)
		if err != nil {
			return err
		}
		secs := func(n int64, _ int) string { return (time.Duration(n) * time.Second).String() }
		if err := d.inRange(int64((dur+time.Second-1)/time.Second), secs); err != nil {
			return err
		}
		v.SetInt(int64(dur))
	default:
		panic("config: unsupported setting type " + v.Type().String())
	}
	return nil
}

func (d *setting) inRange(n int64, format func(int64, int) string) error {
	if d.min != nil && n < *d.min {
		return fmt.Errorf("%s is below the minimum of %s", format(n, 10), format(*d.min, 10))
	}
	if d.max != nil && n > *d.max {
		return fmt.Errorf("%s is above the maximum of %s", format(n, 10), format(*d.max, 10))
	}
	return nil
}

// show formats the field for display, with secrets redacted.
func (d *setting) show(s *Server) string {
	v := reflect.ValueOf(s).Elem().Field(d.field)
	switch x := v.Interface().(type) {
	case string:
		switch {
		case x == "":
			return ""
		case d.secret == "value":
			return "***"
		case d.secret == "conninfo":
			return RedactConninfo(x)
		case d.name == "repository":
			if u, err := url.Parse(x); err == nil {
				return u.Redacted()
			}
		}
		return x
	case bool:
		if x {
			return "on"
		}
		return "off"
	case int:
		return strconv.Itoa(x)
	case Size:
		return FormatSize(int64(x))
	case Duration:
		return time.Duration(x).String()
	}
	return fmt.Sprint(v.Interface())
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, fmt.Errorf("%q is not on/off, true/false, yes/no or 1/0", v)
}

var sizeRe = regexp.MustCompile(`^(\d+)\s*([KMGT]I?B?|B)?$`)

// ParseSize parses "16MiB", "64MB", "1GiB", "512k" or a plain byte count.
// K, M, G and T are binary multiples, with or without the "i".
func ParseSize(v string) (int64, error) {
	m := sizeRe.FindStringSubmatch(strings.ToUpper(strings.TrimSpace(v)))
	if m == nil {
		return 0, fmt.Errorf("%q is not a size: write a number of bytes or e.g. 16MiB, 1GiB", v)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is too large", v)
	}
	shift := 0
	if m[2] != "" {
		shift = 10 * strings.IndexByte("BKMGT", m[2][0])
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("%q is too large", v)
	}
	return n << shift, nil
}

// ParseDuration parses "60s", "5m", "1h30m" or a plain number of seconds.
func ParseDuration(v string) (time.Duration, error) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 && n < 1<<33 {
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q is not a duration: write e.g. 60s, 5m or a number of seconds", v)
	}
	return d, nil
}

// FormatSize writes a byte count the way ParseSize reads it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// suggest proposes the closest known setting for a misspelt one.
func suggest(name string) string {
	best, bestDist := "", 4
	for _, d := range settings {
		if dist := editDistance(name, d.name); dist < bestDist {
			best, bestDist = d.name, dist
		}
	}
	if best == "" {
		return " (see `cellar show-server` for the known settings)"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var (
	conninfoPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)
	conninfoURL      = regexp.MustCompile(`^(postgres(?:ql)?://[^:/@]*:)([^@]*)(@)`)
)

// RedactConninfo hides the password in a libpq connection string, in both
// its key=value and its URL forms.
func RedactConninfo(c string) string {
	c = conninfoPassword.ReplaceAllString(c, "${1}***")
	return conninfoURL.ReplaceAllString(c, "${1}***${3}")
}

func conninfoSecrets(c string) []string {
	var out []string
	for _, m := range conninfoPassword.FindAllStringSubmatch(c, -1) {
		out = append(out, strings.Trim(m[2], "'"))
	}
	if m := conninfoURL.FindStringSubmatch(c); m != nil && m[2] != "" {
		out = append(out, m[2])
	}
	return out
}
