module newfuse.local/pause

go 1.22
