package restore

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseTarget(t *testing.T) {
	settings := func(tg Target) string {
		var b []string
		for _, kv := range tg.Settings {
			b = append(b, kv[0]+"="+kv[1])
		}
		return strings.Join(b, " ")
	}
	for _, c := range []struct {
		spec TargetSpec
		want string
	}{
		{TargetSpec{}, "recovery_target_timeline=latest"},
		{TargetSpec{Time: "2026-12-01 10:00:00+00"}, "recovery_target_time=2026-12-01 10:00:00+00 recovery_target_timeline=latest recovery_target_action=promote"},
		{TargetSpec{Time: "2026-12-01T10:00:00.5Z", Action: "pause", Exclusive: true}, "recovery_target_time=2026-12-01 10:00:00.5+00 recovery_target_timeline=latest recovery_target_action=pause recovery_target_inclusive=off"},
		{TargetSpec{LSN: "16/B374D848", Timeline: "3"}, "recovery_target_lsn=16/B374D848 recovery_target_timeline=3 recovery_target_action=promote"},
		{TargetSpec{XID: "1234", Action: "shutdown"}, "recovery_target_xid=1234 recovery_target_timeline=latest recovery_target_action=shutdown"},
		{TargetSpec{Name: "before-upgrade", Timeline: "current"}, "recovery_target_name=before-upgrade recovery_target_timeline=current recovery_target_action=promote"},
		{TargetSpec{Immediate: true}, "recovery_target=immediate recovery_target_timeline=latest recovery_target_action=promote"},
	} {
		tg, err := ParseTarget(c.spec)
		if err != nil || settings(tg) != c.want {
			t.Errorf("ParseTarget(%+v) = %q, %v; want %q", c.spec, settings(tg), err, c.want)
		}
	}
	for _, c := range []struct {
		spec  TargetSpec
		field string
	}{
		{TargetSpec{Time: "yesterday"}, "time"},
		{TargetSpec{LSN: "16"}, "lsn"},
		{TargetSpec{XID: "-1"}, "xid"},
		{TargetSpec{Timeline: "0"}, "timeline"},
		{TargetSpec{Action: "pause"}, "action"},
		{TargetSpec{Immediate: true, Action: "explode"}, "action"},
		{TargetSpec{Name: "x", Exclusive: true}, "exclusive"},
		{TargetSpec{XID: "1", Name: "x"}, ""},
	} {
		_, err := ParseTarget(c.spec)
		var te *TargetError
		if !errors.As(err, &te) || te.Field != c.field {
			t.Errorf("ParseTarget(%+v) = %v; want a TargetError on %q", c.spec, err, c.field)
		}
	}
	// Without a zone, a time is local.
	tg, err := ParseTarget(TargetSpec{Time: "2026-12-01 10:00:00"})
	if err != nil || !tg.Time.Equal(time.Date(2026, 12, 1, 10, 0, 0, 0, time.Local)) {
		t.Errorf("a time without a zone = %v, %v", tg.Time, err)
	}
}
