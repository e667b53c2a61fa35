"""All writes of the artifacts app, one module per subdomain:

- `imports`: registering a checkpoint from a local folder or an S3 prefix;
- `verification`: hashing every stored file and deciding ready or quarantined;
- `links`: signed download links and the bundle (manifest, checksums, `download.sh`);
- `downloads`: redeeming one signed link (the access check, the quota, the record);
- `reshard`: asking for a conversion; `reshard_run`: running one.

Who may download is decided only by `access.selectors.release_access_check`, asked afresh at every
redemption, so a revocation applies even to links issued before it.
"""
