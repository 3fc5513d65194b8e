"""The leaderboard page's HTML, CSS and JavaScript, read by `mch.site` (package data)."""
