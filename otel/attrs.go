package dtxotel

import (
	"errors"

	"github.com/dtx-go/dtx"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// The attribute keys of dtx's own (the others are semconv's).
const (
	keyOperation = attribute.Key("dtx.operation")
	keyName      = attribute.Key("dtx.name")
	keyGlobal    = attribute.Key("dtx.global.id")
	keyResource  = attribute.Key("dtx.resource")
	keyMode      = attribute.Key("dtx.mode")
	keyBranches  = attribute.Key("dtx.branches")
	keyRetryable = attribute.Key("dtx.retryable")
	keyState     = attribute.Key("dtx.state")
	keyReason    = attribute.Key("dtx.reason")
	keyAction    = attribute.Key("dtx.recovery.action")
	keyResult    = attribute.Key("dtx.result")
	keyNode      = attribute.Key("dtx.node")
)

// statements are db.operation.name by system and operation.
var statements = map[string][7]string{
	"postgresql": {dtx.OpBegin: "BEGIN", dtx.OpPrepare: "PREPARE TRANSACTION", dtx.OpCommit: "COMMIT PREPARED", dtx.OpRollback: "ROLLBACK"},
	"mysql":      {dtx.OpBegin: "XA START", dtx.OpPrepare: "XA PREPARE", dtx.OpCommit: "XA COMMIT", dtx.OpRollback: "XA ROLLBACK"},
}

// operationName is op's db.operation.name: the statement dtx sends, or
// dtx's name of the operation for a system it does not know.
func operationName(op dtx.Op) string {
	if s := statements[op.System][op.Kind]; s != "" {
		return s
	}
	return op.Kind.String()
}

// isClient reports whether op talks to one database: a named transaction's
// operations and a branch's begin. A global's own phases span several.
func isClient(op dtx.Op) bool { return op.System != "" }

// sentinels name dtx's errors for error.type, most telling first.
var sentinels = []struct {
	err  error
	name string
}{
	{dtx.ErrHeuristic, "heuristic"},
	{dtx.ErrPending, "pending"},
	{dtx.ErrOutcomeUnknown, "outcome_unknown"},
	{dtx.ErrRolledBack, "rolled_back"},
	{dtx.ErrNotPrepared, "not_prepared"},
	{dtx.ErrNameInUse, "name_in_use"},
	{dtx.ErrNameHeld, "name_held"},
	{dtx.ErrUnknownName, "unknown_name"},
	{dtx.ErrAlreadyFinished, "already_finished"},
	{dtx.ErrInvalidName, "invalid_name"},
	{dtx.ErrPreparedTransactionsDisabled, "prepared_transactions_disabled"},
}

// errorAttrs are error.type and dtx.retryable for err.
func errorAttrs(err error) []attribute.KeyValue {
	et := semconv.ErrorType(err)
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			et = semconv.ErrorTypeKey.String(s.name)
			break
		}
	}
	return []attribute.KeyValue{et, keyRetryable.Bool(dtx.Retryable(err))}
}
