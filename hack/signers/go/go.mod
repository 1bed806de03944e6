module newfuse.io/signers/go

go 1.22
