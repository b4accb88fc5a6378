package restore

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cellar-backup/cellar/pg"
)

// TargetSpec is a recovery target as the user writes it: at most one of
// Time, LSN, XID, Name and Immediate, and what to do there.
type TargetSpec struct {
	Time, LSN, XID, Name string
	Immediate            bool
	// Timeline is latest (PostgreSQL's default), current or a number.
	Timeline string
	// Action is pause, promote or shutdown; "" is promote with a target.
	Action string
	// Exclusive stops just before the target.
	Exclusive bool
}

// Target is a checked recovery target and the settings that make
// PostgreSQL stop there.
type Target struct {
	Kind     string // "", time, lsn, xid, name or immediate
	Time     time.Time
	LSN      pg.LSN
	Text     string // the target as PostgreSQL's setting has it
	Settings [][2]string
}

// TargetError says what part of a target is wrong: Field is time, lsn,
// xid, name, timeline, action or exclusive, or "" for the combination.
type TargetError struct {
	Field string
	Msg   string
}

func (e *TargetError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return "target " + e.Field + " " + e.Msg
}

func targetErr(field, format string, args ...any) error {
	return &TargetError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Describe says where recovery stops, for a message such as "Start
// PostgreSQL on it to recover<Describe>".
func (t Target) Describe() string {
	switch t.Kind {
	case "":
		return " to the end of the archived WAL"
	case "immediate":
		return " until the backup is consistent"
	}
	return " to " + t.Kind + " " + t.Text
}

// timeLayouts are the forms a target time may take; without a zone, the
// time is local.
var timeLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999Z07:00",
	"2006-01-02 15:04:05.999999999Z07",
	"2006-01-02 15:04:05.999999999 Z07:00",
	"2006-01-02 15:04:05.999999999 MST",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05.999999999",
}

// ParseTargetTime reads a target time in PostgreSQL's or RFC 3339's form.
func ParseTargetTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range timeLayouts {
		var t time.Time
		var err error
		if strings.Contains(l, "07") || strings.Contains(l, "MST") {
			t, err = time.Parse(l, s)
		} else {
			t, err = time.ParseInLocation(l, s, time.Local)
		}
		if err == nil {
			return t, nil
		}
	}
	return time.Time{}, targetErr("time", "%q is not a time: write e.g. '2026-12-01 10:00:00+00' or 2026-12-01T10:00:00Z", s)
}

// ParseTarget checks a target and gives the recovery settings for it.
func ParseTarget(s TargetSpec) (Target, error) {
	var t Target
	n := 0
	for _, set := range []bool{s.Time != "", s.LSN != "", s.XID != "", s.Name != "", s.Immediate} {
		if set {
			n++
		}
	}
	if n > 1 {
		return t, targetErr("", "give at most one target")
	}
	switch {
	case s.Time != "":
		tm, err := ParseTargetTime(s.Time)
		if err != nil {
			return t, err
		}
		t.Kind, t.Time, t.Text = "time", tm, tm.UTC().Format("2006-01-02 15:04:05.999999+00")
		t.Settings = append(t.Settings, [2]string{"recovery_target_time", t.Text})
	case s.LSN != "":
		l, err := pg.ParseLSN(s.LSN)
		if err != nil {
			return t, targetErr("lsn", "%v", err)
		}
		t.Kind, t.LSN, t.Text = "lsn", l, l.String()
		t.Settings = append(t.Settings, [2]string{"recovery_target_lsn", t.Text})
	case s.XID != "":
		x := strings.TrimSpace(s.XID)
		if _, err := strconv.ParseUint(x, 10, 64); err != nil {
			return t, targetErr("xid", "%q is not a transaction id (a whole number)", x)
		}
		t.Kind, t.Text = "xid", x
		t.Settings = append(t.Settings, [2]string{"recovery_target_xid", x})
	case s.Name != "":
		t.Kind, t.Text = "name", s.Name
		t.Settings = append(t.Settings, [2]string{"recovery_target_name", s.Name})
	case s.Immediate:
		t.Kind = "immediate"
		t.Settings = append(t.Settings, [2]string{"recovery_target", "immediate"})
	}
	tl := strings.ToLower(strings.TrimSpace(s.Timeline))
	if tl == "" {
		tl = "latest"
	}
	if tl != "latest" && tl != "current" {
		if n, err := strconv.ParseUint(tl, 10, 32); err != nil || n == 0 {
			return t, targetErr("timeline", "%q: use latest, current or a timeline number", s.Timeline)
		}
	}
	t.Settings = append(t.Settings, [2]string{"recovery_target_timeline", tl})
	action := strings.ToLower(s.Action)
	switch action {
	case "":
		if t.Kind != "" {
			action = "promote"
		}
	case "pause", "promote", "shutdown":
		if t.Kind == "" {
			return t, targetErr("action", "needs a target")
		}
	default:
		return t, targetErr("action", "%q: use pause, promote or shutdown", action)
	}
	if action != "" {
		t.Settings = append(t.Settings, [2]string{"recovery_target_action", action})
	}
	if s.Exclusive {
		if t.Kind == "" || t.Kind == "immediate" || t.Kind == "name" {
			return t, targetErr("exclusive", "needs a target time, LSN or transaction id")
		}
		t.Settings = append(t.Settings, [2]string{"recovery_target_inclusive", "off"})
	}
	return t, nil
}
