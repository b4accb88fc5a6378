package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/cellar-backup/cellar/cloud/storagetest/testservers"
)

// backendCase is one repository kind with the configuration and
// environment that reach its test server.
type backendCase struct {
	name string
	// good returns a configuration and environment that work.
	good func(t *testing.T) (conf string, env []string)
	// endpoint returns the same with the endpoint replaced.
	endpoint func(t *testing.T, endpoint string) (conf string, env []string)
	// badCredentials returns a setup whose credentials are refused, and
	// the secret that must never be printed.
	badCredentials func(t *testing.T) (conf string, env []string, secret string)
	// missingBucket names a bucket or container that does not exist.
	missingBucket func(t *testing.T) (conf string, env []string)
}

func backendCases() []backendCase {
	const wrongSecret = "Wr0ngSecretKeyValue+/abc"
	return []backendCase{
		{
			name: "s3",
			good: func(t *testing.T) (string, []string) {
				m := testservers.S3(t)
				return s3Conf(m.NewBucket(t), m.Endpoint), s3Env(m.AccessKey, m.SecretKey)
			},
			endpoint: func(t *testing.T, endpoint string) (string, []string) {
				m := testservers.S3(t)
				return s3Conf("cellar-any", endpoint), s3Env(m.AccessKey, m.SecretKey)
			},
			badCredentials: func(t *testing.T) (string, []string, string) {
				m := testservers.S3(t)
				return s3Conf(m.NewBucket(t), m.Endpoint), s3Env(m.AccessKey, wrongSecret), wrongSecret
			},
			missingBucket: func(t *testing.T) (string, []string) {
				m := testservers.S3(t)
				return s3Conf("cellar-no-such-bucket", m.Endpoint), s3Env(m.AccessKey, m.SecretKey)
			},
		},
		{
			name: "gcs",
			good: func(t *testing.T) (string, []string) {
				g := testservers.GCS(t)
				return "[main]\nrepository = gs://" + g.NewBucket(t) + "/pg\n", []string{"STORAGE_EMULATOR_HOST=" + g.Host}
			},
			endpoint: func(t *testing.T, endpoint string) (string, []string) {
				return "[main]\nrepository = gs://cellar-any/pg\ngcs_endpoint = " + endpoint + "\n", nil
			},
			badCredentials: func(t *testing.T) (string, []string, string) {
				// fake-gcs-server does not check credentials; this server
				// answers every request as GCS answers refused credentials.
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "application/json")
					w.WriteHeader(http.StatusForbidden)
					_, _ = w.Write([]byte(`{"error":{"code":403,"message":"caller does not have storage.objects.list access","errors":[{"reason":"forbidden"}]}}`))
				}))
				t.Cleanup(srv.Close)
				return "[main]\nrepository = gs://cellar-any/pg\ngcs_endpoint = " + srv.URL + "\n", nil, "no-secret-in-this-case"
			},
			missingBucket: func(t *testing.T) (string, []string) {
				g := testservers.GCS(t)
				return "[main]\nrepository = gs://cellar-no-such-bucket/pg\n", []string{"STORAGE_EMULATOR_HOST=" + g.Host}
			},
		},
		{
			name: "azure",
			good: func(t *testing.T) (string, []string) {
				a := testservers.Azure(t)
				return azureConf(a.NewContainer(t), a.Account, a.Endpoint), []string{"AZURE_STORAGE_KEY=" + a.Key}
			},
			endpoint: func(t *testing.T, endpoint string) (string, []string) {
				a := testservers.Azure(t)
				return azureConf("cellar-any", a.Account, endpoint+"/"+a.Account), []string{"AZURE_STORAGE_KEY=" + a.Key}
			},
			badCredentials: func(t *testing.T) (string, []string, string) {
				a := testservers.Azure(t)
				bad := "QmFkS2V5Rm9yVGVzdHNPbmx5QmFkS2V5Rm9yVGVzdHNPbmx5QmFkS2V5Rm9yVGVzdHM="
				return azureConf(a.NewContainer(t), a.Account, a.Endpoint) + "azure_key = " + bad + "\n", nil, bad
			},
			missingBucket: func(t *testing.T) (string, []string) {
				a := testservers.Azure(t)
				return azureConf("cellar-no-such-container", a.Account, a.Endpoint), []string{"AZURE_STORAGE_KEY=" + a.Key}
			},
		},
	}
}

func s3Conf(bucket, endpoint string) string {
	return "[main]\nrepository = s3://" + bucket + "/pg\ns3_endpoint = " + endpoint + "\ns3_region = us-east-1\ns3_force_path_style = on\n"
}

func s3Env(id, secret string) []string {
	return []string{"AWS_ACCESS_KEY_ID=" + id, "AWS_SECRET_ACCESS_KEY=" + secret, "AWS_EC2_METADATA_DISABLED=true"}
}

func azureConf(container, account, endpoint string) string {
	return "[main]\nrepository = azure://" + container + "/pg\nazure_account = " + account + "\nazure_endpoint = " + endpoint + "\n"
}

// blackHole accepts connections and never answers.
func blackHole(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		l.Close()
		for _, c := range conns {
			c.Close()
		}
	})
	return "http://" + l.Addr().String()
}

// checkFails runs check and asserts that exactly one check failed, the
// repository being reachable, with a hint containing want (case-insensitive), exit status 1, no
// secret printed, and an answer within the 30 s that check promises.
func checkFails(t *testing.T, conf string, env []string, secret, want string) {
	t.Helper()
	r := cellar(t, env, "--config", writeConfig(t, conf), "check", "main")
	out := r.stdout + r.stderr
	if r.code != 1 {
		t.Fatalf("check exit %d, want 1; output:\n%s", r.code, out)
	}
	if !strings.HasPrefix(r.stdout, "configuration: OK\nrepository reachable: FAILED (") || strings.Count(r.stdout, "\n") != 2 {
		t.Fatalf("check output:\n%s", out)
	}
	first := strings.Split(r.stdout, "\n")[1]
	if !strings.Contains(strings.ToLower(first), strings.ToLower(want)) {
		t.Fatalf("the failed check %q does not say %q", first, want)
	}
	if secret != "" && strings.Contains(out, secret) {
		t.Fatalf("check printed the secret:\n%s", out)
	}
	// A liveness bound that check promises, not a performance figure.
	if r.elapsed > 30*time.Second {
		t.Fatalf("check took %v, it must answer within 30 s", r.elapsed)
	}
	t.Logf("%s (%.1f s)", first, r.elapsed.Seconds())
}

func TestCheckCloudRepositories(t *testing.T) {
	for _, c := range backendCases() {
		t.Run(c.name, func(t *testing.T) {
			t.Run("OK", func(t *testing.T) {
				conf, env := c.good(t)
				r := cellar(t, env, "--config", writeConfig(t, conf), "check", "main")
				want := "configuration: OK\nrepository reachable: OK\nrepository writable: OK\n"
				if r.code != 0 || r.stdout != want {
					t.Fatalf("check = exit %d\n%s%s", r.code, r.stdout, r.stderr)
				}
			})
			t.Run("RefusedEndpoint", func(t *testing.T) {
				conf, env := c.endpoint(t, "http://127.0.0.1:1")
				checkFails(t, conf, env, "", "127.0.0.1:1")
			})
			t.Run("SilentEndpoint", func(t *testing.T) {
				conf, env := c.endpoint(t, blackHole(t))
				checkFails(t, conf, env, "", "no answer within 12s from http://127.0.0.1:")
			})
			t.Run("BadCredentials", func(t *testing.T) {
				conf, env, secret := c.badCredentials(t)
				checkFails(t, conf, env, secret, "denied")
			})
			t.Run("MissingBucket", func(t *testing.T) {
				conf, env := c.missingBucket(t)
				checkFails(t, conf, env, "", "does not exist")
			})
		})
	}
}

// TestCheckReadOnlyRepository: credentials that may list and read but not
// write pass the reachability check and fail the write check, with the
// token never printed.
func TestCheckReadOnlyRepository(t *testing.T) {
	a := testservers.Azure(t)
	container := a.NewContainer(t)
	token := a.ContainerSAS(t, container, sas.ContainerPermissions{Read: true, List: true})
	conf := "[main]\nrepository = azure://" + container + "/pg\nazure_endpoint = " + a.Endpoint + "\nazure_sas_token = " + token + "\n"
	r := cellar(t, nil, "--config", writeConfig(t, conf), "check", "main")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 1 || len(lines) != 3 || lines[1] != "repository reachable: OK" ||
		!strings.HasPrefix(lines[2], "repository writable: FAILED (") || !strings.Contains(lines[2], "denied") {
		t.Fatalf("check with a read-only SAS: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	sig, _ := url.ParseQuery(token)
	if s := sig.Get("sig"); s == "" || strings.Contains(r.stdout+r.stderr, s) || strings.Contains(r.stdout+r.stderr, url.QueryEscape(s)) {
		t.Fatalf("check printed the SAS signature (or there is none):\n%s", r.stdout)
	}
	r = cellar(t, nil, "--config", writeConfig(t, conf), "show-server", "main")
	if !strings.Contains(r.stdout, "azure_sas_token: ***") {
		t.Fatalf("show-server does not redact the SAS token:\n%s", r.stdout)
	}
}
