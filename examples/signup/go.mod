module github.com/dtx-go/dtx/examples/signup

go 1.26

replace (
	github.com/dtx-go/dtx => ../..
	github.com/dtx-go/dtx/dtxtest => ../../dtxtest
)

require (
	github.com/DATA-DOG/go-sqlmock v1.5.2
	github.com/dtx-go/dtx v0.0.0-00010101000000-000000000000
	github.com/dtx-go/dtx/dtxtest v0.0.0-00010101000000-000000000000
)

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	github.com/go-sql-driver/mysql v1.10.1 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/lib/pq v1.12.3 // indirect
)
