package gcs

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"cloud.google.com/go/auth"
	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"

	"github.com/cellar-backup/cellar/cloud"
)

// translate turns an SDK error into one wrapping cloud's named errors, with
// the operation and key, and for a permanent error what to fix.
func (s *Storage) translate(op, key string, err error) error {
	var gerr *googleapi.Error
	var aerr *auth.Error
	switch {
	case errors.Is(err, storage.ErrBucketNotExist):
		err = s.noBucket()
	case errors.Is(err, storage.ErrObjectNotExist):
		err = s.notExist(key)
	case errors.As(err, &gerr):
		switch gerr.Code {
		case http.StatusUnauthorized, http.StatusForbidden:
			err = s.denied(err)
		case http.StatusNotFound:
			// An upload or a listing names only the bucket.
			if op == "put" || op == "create" || op == "list" {
				err = s.noBucket()
			} else {
				err = s.notExist(key)
			}
		case http.StatusPreconditionFailed:
			err = fmt.Errorf("gcs: %w: gs://%s/%s", cloud.ErrExist, s.bucketName, s.name(key))
		}
	case errors.As(err, &aerr) && aerr.Response != nil &&
		(aerr.Response.StatusCode == http.StatusBadRequest ||
			aerr.Response.StatusCode == http.StatusUnauthorized ||
			aerr.Response.StatusCode == http.StatusForbidden):
		// The token endpoint refused the credentials.
		err = s.denied(err)
	}
	return cloud.OpError(op, key, err)
}

// translateMissing is translate for an operation on one object, whose 404
// does not tell a missing object from a missing bucket: it then asks for
// the bucket. If that cannot tell (the account may not read bucket
// metadata), the object is reported missing.
func (s *Storage) translateMissing(ctx context.Context, op, key string, err error) error {
	err = s.translate(op, key, err)
	if errors.Is(err, cloud.ErrNotExist) {
		if _, berr := s.bucket.Attrs(ctx); errors.Is(berr, storage.ErrBucketNotExist) {
			return cloud.OpError(op, key, s.noBucket())
		}
	}
	return err
}

func (s *Storage) notExist(key string) error {
	return fmt.Errorf("gcs: %w: gs://%s/%s", cloud.ErrNotExist, s.bucketName, s.name(key))
}

func (s *Storage) noBucket() error {
	return fmt.Errorf("gcs: %w: bucket %q (check the repository URL)", cloud.ErrNoBucket, s.bucketName)
}

func (s *Storage) denied(err error) error {
	return fmt.Errorf("gcs: %w to bucket %q (%s): %w", cloud.ErrPermission, s.bucketName, s.hint, err)
}
