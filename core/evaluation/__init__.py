"""``qaflora eval``: the paper's composite table and LoGo's mixed-stream table, on the demo zoo."""
