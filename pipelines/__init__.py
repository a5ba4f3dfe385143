"""ragvid.pipelines."""
