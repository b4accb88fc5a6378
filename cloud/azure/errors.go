package azure

import (
	"cmp"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/cellar-backup/cellar/cloud"
)

// fail translates an error of operation op on key into the named errors of
// package cloud, with a hint at the setting to fix for a permanent one, and
// with every secret scrubbed from its message.
func (s *Storage) fail(op, key string, err error) error {
	err = s.redact(err)
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		var af *azidentity.AuthenticationFailedError
		if errors.As(err, &af) {
			return cloud.OpError(op, key, fmt.Errorf("azure: %w to container %q (%s): %w", cloud.ErrPermission, s.name, s.hint, err))
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			// The retry policy reports the context's end, not the failure
			// it was retrying: name the endpoint it was trying to reach.
			return cloud.OpError(op, key, fmt.Errorf("azure: %w (endpoint %s)", err, s.endpoint))
		}
		return cloud.OpError(op, key, fmt.Errorf("azure: %w", err))
	}
	short := summarize(err)
	switch {
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return cloud.OpError(op, key, fmt.Errorf("azure: container %q: %w (check the repository URL and the storage account): %w", s.name, cloud.ErrNoBucket, short))
	case isNotFound(err):
		return cloud.OpError(op, key, fmt.Errorf("azure: %w: %w", cloud.ErrNotExist, short))
	case re.StatusCode == http.StatusForbidden:
		return cloud.OpError(op, key, fmt.Errorf("azure: %w to container %q (%s): %w", cloud.ErrPermission, s.name, s.hint, short))
	}
	return cloud.OpError(op, key, fmt.Errorf("azure: %w", short))
}

// isNotFound reports whether err says the blob does not exist. A HEAD
// request (Stat) has no body, so its 404 may carry no error code.
func isNotFound(err error) bool {
	if bloberror.HasCode(err, bloberror.BlobNotFound) {
		return true
	}
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound && re.ErrorCode == ""
}

// isBlobNotFound is isNotFound for Delete, which must not hide a missing
// container.
func isBlobNotFound(err error) bool {
	return isNotFound(err) && !bloberror.HasCode(err, bloberror.ContainerNotFound)
}

// maybeExists reports whether a conditional upload's failure may mean that
// the blob exists: the precondition failed (409 BlobAlreadyExists, 412
// ConditionNotMet), or a concurrent writer committed first and so discarded
// this upload's uncommitted blocks (400 InvalidBlockList).
func maybeExists(err error) bool {
	if bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet, bloberror.InvalidBlockList) {
		return true
	}
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusPreconditionFailed && re.ErrorCode == ""
}

// responseError shows an SDK response error in one line ("HTTP 403
// AuthenticationFailed: Server failed to authenticate the request...")
// instead of the SDK's multi-line dump, and unwraps to it.
type responseError struct {
	msg string
	err error
}

func (e *responseError) Error() string { return e.msg }
func (e *responseError) Unwrap() error { return e.err }

// summarize returns err as a one-line responseError if it is an SDK
// response error, or err itself.
func summarize(err error) error {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return err
	}
	msg := fmt.Sprintf("HTTP %d", re.StatusCode)
	if re.ErrorCode != "" {
		msg += " " + re.ErrorCode
	}
	if re.RawResponse != nil {
		if body, perr := runtime.Payload(re.RawResponse); perr == nil && len(body) > 0 {
			var e struct {
				Message string `xml:"Message"`
			}
			if xml.Unmarshal(body, &e) == nil {
				if line, _, _ := strings.Cut(strings.TrimSpace(e.Message), "\n"); line != "" {
					msg += ": " + strings.TrimSpace(line)
				}
			}
		}
	}
	return &responseError{msg: msg, err: err}
}

// redacted shows an error's message with its secrets removed, and unwraps
// to the original error.
type redacted struct {
	msg string
	err error
}

func (e *redacted) Error() string { return e.msg }
func (e *redacted) Unwrap() error { return e.err }

// sigParam matches a SAS signature in a URL or message.
var sigParam = regexp.MustCompile(`(?i)\b(sig=)[^&\s"';]+`)

// redact removes the configured secrets (shared key, SAS token, connection
// string) from err's message. Transport errors (*url.Error) quote the
// request URL, which carries the SAS token when one is used: their URL is
// scrubbed in place as well, so that no error in the chain shows it.
func (s *Storage) redact(err error) error {
	if err == nil {
		return nil
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = s.scrub(ue.URL)
	}
	msg := err.Error()
	if clean := s.scrub(msg); clean != msg {
		return &redacted{msg: clean, err: err}
	}
	return err
}

func (s *Storage) scrub(text string) string {
	for _, secret := range s.secrets {
		text = strings.ReplaceAll(text, secret, "REDACTED")
	}
	return sigParam.ReplaceAllString(text, "${1}REDACTED")
}

// secretsOf lists the secret strings of cfg, in the spellings an error
// message might quote them, longest first.
func secretsOf(cfg Config) []string {
	var out []string
	add := func(v string) {
		v = strings.TrimSpace(v)
		if len(v) < 8 {
			return
		}
		out = append(out, v, url.QueryEscape(v))
		if u, err := url.QueryUnescape(v); err == nil {
			out = append(out, u)
		}
	}
	addSAS := func(sas string) {
		sas = strings.TrimPrefix(sas, "?")
		add(sas)
		if q, err := url.ParseQuery(sas); err == nil {
			add(q.Get("sig"))
		}
	}
	add(cfg.Key)
	addSAS(cfg.SASToken)
	add(cfg.ConnectionString)
	for _, part := range strings.Split(cfg.ConnectionString, ";") {
		name, value, _ := strings.Cut(part, "=")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "accountkey":
			add(value)
		case "sharedaccesssignature":
			addSAS(value)
		}
	}
	// Longest first, so that a secret containing another is scrubbed whole.
	slices.SortFunc(out, func(a, b string) int { return cmp.Or(len(b)-len(a), strings.Compare(a, b)) })
	return slices.Compact(out)
}
