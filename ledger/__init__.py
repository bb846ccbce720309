"""Double-entry ledger on PostgreSQL: schema and migrations, postings, balances, money."""
