"""Nomad's plugin protocol: BasePlugin/Driver services, hclspec schemas, cty-msgpack, conversions."""
