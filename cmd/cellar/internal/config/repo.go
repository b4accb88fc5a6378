package config

import "github.com/cellar-backup/cellar/cmd/cellar/internal/repo"

// RepoOptions maps the server's settings, and the providers' own
// environment variables (getenv) for Google's emulator and Azure, to the
// storage registry's options.
func (s *Server) RepoOptions(getenv func(string) string) repo.Options {
	o := repo.Options{
		URL:                   s.Repository,
		PartSize:              int64(s.UploadPartSize),
		Concurrency:           s.UploadConcurrency,
		S3Endpoint:            s.S3Endpoint,
		S3Region:              s.S3Region,
		S3ForcePathStyle:      s.S3ForcePathStyle,
		GCSEndpoint:           s.GCSEndpoint,
		GCSEmulatorHost:       getenv("STORAGE_EMULATOR_HOST"),
		AzureAccount:          s.AzureAccount,
		AzureEndpoint:         s.AzureEndpoint,
		AzureKey:              s.AzureKey,
		AzureSASToken:         s.AzureSASToken,
		AzureConnectionString: getenv("AZURE_STORAGE_CONNECTION_STRING"),
	}
	if o.AzureAccount == "" {
		o.AzureAccount = getenv("AZURE_STORAGE_ACCOUNT")
	}
	if o.AzureKey == "" {
		o.AzureKey = getenv("AZURE_STORAGE_KEY")
	}
	if o.AzureSASToken == "" {
		o.AzureSASToken = getenv("AZURE_STORAGE_SAS_TOKEN")
	}
	o.FileOwner = repo.FileOwner(s.Repository, s.PGData)
	o.Keys, o.Seal = s.keys, s.Encryption == "age"
	return o
}
