// Package signup is a sample of code that uses dtx, and its tests
// (signup_test.go) a sample of unit tests with dtxtest: what a user of dtx
// writes, in a module of its own.
package signup

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/dtx-go/dtx"
)

// Register stages a new account for email as a prepared transaction, has
// charge bill the card, and then commits the account, or rolls it back
// when the charge fails.
func Register(ctx context.Context, db *sql.DB, email string, charge func(ctx context.Context, email string) error) error {
	name := "signup_" + email
	err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO accounts (email, status) VALUES ($1, 'active')", email)
		return err
	})
	if err != nil {
		return fmt.Errorf("signup: %w", err)
	}
	if err := charge(ctx, email); err != nil {
		if rbErr := dtx.RollbackDistributed(ctx, name); rbErr != nil {
			return fmt.Errorf("signup: charge failed: %w", errors.Join(err, rbErr))
		}
		return fmt.Errorf("signup: charge failed: %w", err)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		return fmt.Errorf("signup: %w", err)
	}
	return nil
}
