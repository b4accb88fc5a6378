package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress renders a workflow's progress: a bar with bytes, rate and ETA
// on a terminal, a log line every interval otherwise, nothing with
// --quiet.
type progress struct {
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

// newProgress returns the renderer for a command's progress on stderr.
func (st *state) newProgress(what string) *progress {
	p := &progress{log: st.log, what: what, interval: 10 * time.Second, w: st.stderr, quiet: st.quiet}
	if f, ok := st.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

// say makes stage one worth telling about, with text.
func (p *progress) say(stage, text string) {
	if p.says == nil {
		p.says = map[string]string{}
	}
	p.says[stage] = text
}

func (p *progress) Start(total int64) {
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

func (p *progress) Add(n int64) {
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
	attrs := []any{"done", humanSize(p.done), "total", humanSize(p.total), "rate", humanSize(int64(rate)) + "/s"}
	if rate > 0 && p.total > p.done {
		attrs = append(attrs, "eta", (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second))
	}
	if p.total > 0 {
		attrs = append(attrs, "percent", fmt.Sprintf("%.0f", 100*float64(p.done)/float64(p.total)))
	}
	p.log.Info(p.what, attrs...)
}

func (p *progress) Stage(name string) {
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
func (p *progress) endWait() {
	if p.waited != nil {
		close(p.waited)
		p.waited = nil
	}
	if p.bar != nil && p.bar.GetMax64() < 0 {
		_ = p.bar.Finish()
		p.bar = nil
	}
}

func (p *progress) Done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.endWait()
	if p.bar != nil {
		_ = p.bar.Finish()
		p.bar = nil
	}
}
