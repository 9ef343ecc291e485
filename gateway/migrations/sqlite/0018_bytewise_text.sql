-- PostgreSQL's text columns now compare byte by byte (COLLATE "C"), as
-- SQLite's always have (BINARY): nothing changes here.
SELECT 1;
