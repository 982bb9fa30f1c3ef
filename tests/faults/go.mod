module github.com/dtx-go/dtx/tests/faults

go 1.26

replace github.com/dtx-go/dtx => ../..

require (
	github.com/dtx-go/dtx v0.0.0-00010101000000-000000000000
	github.com/go-sql-driver/mysql v1.10.1
	github.com/lib/pq v1.12.3
)

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	github.com/google/uuid v1.6.0 // indirect
)
