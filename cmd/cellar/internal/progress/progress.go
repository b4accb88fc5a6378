// Package progress renders a workflow's catalog.Progress for a person: a
// bar with bytes, rate and ETA on a terminal, a log line every interval
// otherwise, nothing when quiet; and the stages worth a word (a spread
// checkpoint that is silent for minutes) as a log line and a spinner.
package progress

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/cellar-backup/cellar/catalog"
)

// Bar renders a workflow's progress: a bar with bytes, rate and ETA
// on a terminal, a log line every interval otherwise, nothing with
// --quiet.
type Bar struct {
	mu       sync.Mutex
	bar      *progressbar.ProgressBar
	log      *slog.Logger
	what     string
	total    int64
	done     int64
	began    time.Time
	last     time.Time
	interval time.Duration
	w        io.Writer
	tty      bool
	quiet    bool
	// says gives the stages worth telling the user about their text: such
	// a stage is logged, and shown with a spinner on a terminal until the
	// bar starts (a spread checkpoint is silent for minutes otherwise).
	says map[string]string
	// waited stops the reminders of a stage being waited for.
	waited chan struct{}
}

// New returns the renderer of the progress of what (e.g. "backup main")
// on w (a bar when w is a terminal), logging to log.
func New(w io.Writer, log *slog.Logger, what string, quiet bool) *Bar {
	p := &Bar{log: log, what: what, interval: 10 * time.Second, w: w, quiet: quiet}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

// Say makes stage one worth telling about, with text.
func (p *Bar) Say(stage, text string) {
	if p.says == nil {
		p.says = map[string]string{}
	}
	p.says[stage] = text
}

func (p *Bar) Start(total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endWait()
	p.total, p.began, p.last = total, time.Now(), time.Now()
	if p.quiet || !p.tty {
		return
	}
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(p.what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionClearOnFinish(),
	)
}

func (p *Bar) Add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if p.bar != nil {
		_ = p.bar.Add64(n)
		return
	}
	if p.quiet || time.Since(p.last) < p.interval {
		return
	}
	p.last = time.Now()
	secs := time.Since(p.began).Seconds()
	rate := float64(p.done) / secs
	attrs := []any{"done", catalog.HumanSize(p.done), "total", catalog.HumanSize(p.total), "rate", catalog.HumanSize(int64(rate)) + "/s"}
	if rate > 0 && p.total > p.done {
		attrs = append(attrs, "eta", (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second))
	}
	if p.total > 0 {
		attrs = append(attrs, "percent", fmt.Sprintf("%.0f", 100*float64(p.done)/float64(p.total)))
	}
	p.log.Info(p.what, attrs...)
}

func (p *Bar) Stage(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endWait()
	text, worth := p.says[name]
	if !worth {
		text = name
	}
	if p.bar != nil {
		p.bar.Describe(p.what + ": " + text)
		return
	}
	if !worth || p.quiet {
		return
	}
	p.log.Info(p.what + ": " + text)
	since := time.Now()
	if p.tty {
		p.bar = progressbar.NewOptions64(-1,
			progressbar.OptionSetWriter(p.w),
			progressbar.OptionSetDescription(p.what+": "+text),
			progressbar.OptionSpinnerType(14),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionClearOnFinish(),
		)
		return
	}
	// Without a terminal, a reminder every minute says it is still
	// waiting.
	p.waited = make(chan struct{})
	go func(done <-chan struct{}) {
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				p.log.Info(p.what+": still "+text, "waited", time.Since(since).Round(time.Second))
			}
		}
	}(p.waited)
}

// endWait ends the spinner or reminders of the stage waited for.
func (p *Bar) endWait() {
	if p.waited != nil {
		close(p.waited)
		p.waited = nil
	}
	if p.bar != nil && p.bar.GetMax64() < 0 {
		_ = p.bar.Finish()
		p.bar = nil
	}
}

func (p *Bar) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endWait()
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}
