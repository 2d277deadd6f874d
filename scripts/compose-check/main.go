// Command compose-check loads compose files with compose-go, the loader
// that docker compose v2 uses, the way `docker compose -f FILE config`
// would, and fails on anything the loader rejects or warns about.
//
//	compose-check FILE...
//
// scripts/compose-check/run builds it (cached) and passes it every compose
// file of the repository.
//
// Each file is a project of its own, its directory the project directory
// (so its `.env`, `env_file:` entries and relative paths resolve from
// there, as they do for docker compose). A file is loaded with no profile
// enabled, as `docker compose up` starts it (so nothing started by default
// may depend on a service behind a profile), with each of its profiles
// alone, as `docker compose --profile P up` starts it (so nothing in P
// depends on a service only in another profile), and with every profile
// enabled (`--profile '*'`), so that each service is checked. The loader
// validates the file against the compose specification's schema,
// interpolates variables, resolves paths, reads every `env_file` (a
// missing one fails), and checks consistency: an image or a build for
// every service, `depends_on` targets that exist, no dependency cycles,
// declared volumes, secrets, configs and networks, `healthcheck.test`
// forms; then container names are checked unique, as `docker compose
// config` does.
//
// The environment used for interpolation is the project's `.env` (if any)
// and PWD, not the caller's whole environment as docker compose would use:
// a variable that CI happens to set must not hide one that an operator
// has to set.
//
// Warnings of the loader (an unset variable, the obsolete `version`
// attribute, a YAML 1.1 boolean, ...) fail the check too.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/sirupsen/logrus"
)

// warnings collects what the loader logs at warning level or above.
type warnings struct{ messages []string }

func (w *warnings) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel, logrus.WarnLevel}
}

// Fire records a message once: each file is loaded more than once.
func (w *warnings) Fire(e *logrus.Entry) error {
	if !slices.Contains(w.messages, e.Message) {
		w.messages = append(w.messages, e.Message)
	}
	return nil
}

// load loads file as `docker compose -f FILE [--profile P]... config`
// does (docker compose's cmd/compose: toProjectOptions, then the options
// of `config`), with the environment described above.
func load(ctx context.Context, file string, profiles []string) (*types.Project, error) {
	pwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	options, err := cli.NewProjectOptions([]string{file},
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithDiscardEnvFile,
		cli.WithEnv([]string{"PWD=" + pwd}),
		cli.WithEnvFiles(),
		cli.WithDotEnv,
		cli.WithDefaultProfiles(profiles...),
	)
	if err != nil {
		return nil, err
	}
	project, err := options.LoadProject(ctx)
	if err != nil {
		return nil, err
	}
	if err := project.CheckContainerNameUnicity(); err != nil {
		return nil, err
	}
	return project, nil
}

// check loads file with no profile, with each profile alone and with
// every profile, and describes it.
func check(ctx context.Context, file string) (string, error) {
	// WithDefaultProfiles falls back to COMPOSE_PROFILES (empty here) when
	// given none: the services without a profile.
	byDefault, err := load(ctx, file, nil)
	if err != nil {
		return "", fmt.Errorf("with no profile enabled: %w", err)
	}
	all, err := load(ctx, file, []string{"*"})
	if err != nil {
		return "", fmt.Errorf("with every profile enabled: %w", err)
	}
	var profiles []string
	for _, service := range all.Services {
		for _, profile := range service.Profiles {
			if !slices.Contains(profiles, profile) {
				profiles = append(profiles, profile)
			}
		}
	}
	slices.Sort(profiles)
	for _, profile := range profiles {
		if _, err := load(ctx, file, []string{profile}); err != nil {
			return "", fmt.Errorf("with profile %s: %w", profile, err)
		}
	}
	return fmt.Sprintf("project %s, %d services (%d without a profile; profiles %v), %d volumes, %d secrets",
		all.Name, len(all.Services), len(byDefault.Services), profiles, len(all.Volumes), len(all.Secrets)), nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check COMPOSE_FILE...")
		os.Exit(2)
	}
	logged := &warnings{}
	logrus.SetOutput(io.Discard)
	logrus.AddHook(logged)

	ctx := context.Background()
	failed := 0
	for _, file := range os.Args[1:] {
		logged.messages = nil
		summary, err := check(ctx, file)
		if err == nil && len(logged.messages) > 0 {
			err = fmt.Errorf("the loader warns:\n  %s", strings.Join(logged.messages, "\n  "))
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "compose-check: %s: %v\n", filepath.ToSlash(file), err)
			failed++
			continue
		}
		fmt.Printf("%s: ok, %s\n", filepath.ToSlash(file), summary)
	}
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "compose-check: %d of %d compose files failed to load\n", failed, len(os.Args)-1)
		os.Exit(1)
	}
}
