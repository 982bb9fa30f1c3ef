package signup_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/dtxtest"
	"github.com/dtx-go/dtx/examples/signup"
)

func charged(context.Context, string) error { return nil }

func TestRegister(t *testing.T) {
	t.Parallel()
	m := dtxtest.New(t, dtx.Postgres)
	m.ExpectBegin("signup_ann@example.com")
	m.Mock.ExpectExec("INSERT INTO accounts").WithArgs("ann@example.com").WillReturnResult(sqlmock.NewResult(0, 1))
	m.ExpectPrepare("signup_ann@example.com")
	m.ExpectCommitPrepared("signup_ann@example.com")
	if err := signup.Register(m.Context(), m.DB, "ann@example.com", charged); err != nil {
		t.Fatal(err)
	}
}

func TestRegisterChargeFails(t *testing.T) {
	t.Parallel()
	m := dtxtest.New(t, dtx.Postgres)
	m.ExpectBegin("signup_bob@example.com")
	m.Mock.ExpectExec("INSERT INTO accounts").WithArgs("bob@example.com").WillReturnResult(sqlmock.NewResult(0, 1))
	m.ExpectPrepare("signup_bob@example.com")
	m.ExpectRollbackPrepared("signup_bob@example.com")
	declined := errors.New("card declined")
	err := signup.Register(m.Context(), m.DB, "bob@example.com", func(context.Context, string) error { return declined })
	if !errors.Is(err, declined) {
		t.Fatalf("err = %v, want the charge's error", err)
	}
}

func TestRegisterInsertFails(t *testing.T) {
	t.Parallel()
	m := dtxtest.New(t, dtx.Postgres)
	m.ExpectBegin("signup_cy@example.com")
	m.Mock.ExpectExec("INSERT INTO accounts").WillReturnError(errors.New("duplicate key"))
	m.ExpectRollback("signup_cy@example.com")
	err := signup.Register(m.Context(), m.DB, "cy@example.com", func(context.Context, string) error {
		t.Error("charged although the account was not staged")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "duplicate key") {
		t.Fatalf("err = %v, want the insert's error", err)
	}
}

// TestFailureContained runs TestFailOnPurpose in a child process: its first
// subtest fails (the code prepares another name than the test expects,
// leaving that name in doubt in the process), and the second, with the
// same name, must pass all the same.
func TestFailureContained(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFailOnPurpose$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "SIGNUP_FAIL_ON_PURPOSE=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the child passed; its first subtest should have failed:\n%s", out)
	}
	for _, want := range []string{"--- FAIL: TestFailOnPurpose/fails", "--- PASS: TestFailOnPurpose/next"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
}

func TestFailOnPurpose(t *testing.T) {
	if os.Getenv("SIGNUP_FAIL_ON_PURPOSE") != "1" {
		t.Skip("run by TestFailureContained")
	}
	t.Run("fails", func(t *testing.T) {
		m := dtxtest.New(t, dtx.Postgres)
		m.ExpectBegin("signup_dee@example.com")
		m.Mock.ExpectExec("INSERT INTO accounts").WillReturnResult(sqlmock.NewResult(0, 1))
		m.ExpectPrepare("signup_dee@example.org") // not the name Register uses
		m.ExpectCommitPrepared("signup_dee@example.org")
		if err := signup.Register(m.Context(), m.DB, "dee@example.com", charged); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("next", func(t *testing.T) {
		m := dtxtest.New(t, dtx.Postgres)
		m.ExpectBegin("signup_dee@example.com")
		m.Mock.ExpectExec("INSERT INTO accounts").WillReturnResult(sqlmock.NewResult(0, 1))
		m.ExpectPrepare("signup_dee@example.com")
		m.ExpectCommitPrepared("signup_dee@example.com")
		if err := signup.Register(m.Context(), m.DB, "dee@example.com", charged); err != nil {
			t.Fatal(err)
		}
	})
}
