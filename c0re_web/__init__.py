"""The operator dashboard: an unprivileged Starlette process on the daemon's `web.sock`.

It holds no state of the hive's and opens no file of the daemon's: every page is one
`Snapshot` over the web socket, every change arrives as an event, every action is a
`WebRequest` verb the daemon authorises on its own terms. It never imports `c0re_priv`.
"""
