package azure_test

import (
	"context"
	"net/url"
	"strings"
	"testing"

	"github.com/cellar-backup/cellar/cloud/azure"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url, container, prefix, err string
	}{
		{url: "azure://backups", container: "backups"},
		{url: "azure://backups/", container: "backups"},
		{url: "azure://backups/pg/main/", container: "backups", prefix: "pg/main"},
		{url: "azure://$root/pg", container: "$root", prefix: "pg"},
		{url: "azure:///pg", err: "names no container"},
		{url: "azure:backups/pg", err: "has parts other than"},
		{url: "azure://Backups/pg", err: "not valid"},
		{url: "azure://ab/pg", err: "not valid"},
		{url: "azure://a--b/pg", err: "not valid"},
		{url: "azure://backups/pg/../x", err: "malformed path"},
		{url: "azure://user@backups/pg", err: "has parts other than"},
		{url: "azure://backups/pg?x=1", err: "has parts other than"},
		{url: "s3://backups/pg", err: "not an azure:// URL"},
	} {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatal(err)
		}
		c, p, err := azure.ParseURL(u)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseURL(%s) = %q, %q, %v; want an error containing %q", tc.url, c, p, err, tc.err)
			}
			continue
		}
		if err != nil || c != tc.container || p != tc.prefix {
			t.Errorf("ParseURL(%s) = %q, %q, %v; want %q, %q", tc.url, c, p, err, tc.container, tc.prefix)
		}
	}
}

func TestNewRejects(t *testing.T) {
	const key = "c2VjcmV0LWtleS1mb3ItdGVzdGluZw=="
	for _, tc := range []struct {
		name string
		cfg  azure.Config
		err  string
	}{
		{"no container", azure.Config{Account: "a", Key: key}, "no container"},
		{"bad container", azure.Config{Container: "A_B", Account: "a", Key: key}, "not valid"},
		{"no account", azure.Config{Container: "abc", Key: key}, "set azure_account"},
		{"key without account", azure.Config{Container: "abc", Endpoint: "http://127.0.0.1:1/x", Key: key}, "needs the storage account"},
		{"bad key", azure.Config{Container: "abc", Account: "a", Key: "not base64!!"}, "malformed"},
		{"small block", azure.Config{Container: "abc", Account: "a", Key: key, BlockSize: 1000}, "block size"},
		{"big page", azure.Config{Container: "abc", Account: "a", Key: key, ListPageSize: 10000}, "page size"},
		{"endpoint with query", azure.Config{Container: "abc", Endpoint: "http://h/x?sig=" + key, SASToken: "sig=x"}, "query string"},
		{"bad endpoint", azure.Config{Container: "abc", Endpoint: "ftp://h/x", Account: "a", Key: key}, "http:// or https://"},
		{"bad connection string", azure.Config{Container: "abc", ConnectionString: "AccountKey=" + key}, "AZURE_STORAGE_CONNECTION_STRING"},
		{"bad prefix", azure.Config{Container: "abc", Account: "a", Key: key, Prefix: "a/../b"}, "prefix"},
	} {
		_, err := azure.New(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: New = %v, want an error containing %q", tc.name, err, tc.err)
			continue
		}
		if strings.Contains(err.Error(), key) {
			t.Errorf("%s: the error shows the key: %v", tc.name, err)
		}
	}
}

// TestNewDefaults proves New accepts each credential without network I/O.
func TestNewDefaults(t *testing.T) {
	for _, cfg := range []azure.Config{
		{Container: "abc", Account: "acct", Key: "c2VjcmV0"},
		{Container: "abc", Account: "acct", SASToken: "?sv=2020-01-01&sig=abc"},
		{Container: "abc", ConnectionString: "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"},
		{Container: "abc", Account: "acct"},
	} {
		s, err := azure.New(context.Background(), cfg)
		if err != nil {
			t.Errorf("New(%+v): %v", cfg, err)
			continue
		}
		_ = s.Close()
	}
}
