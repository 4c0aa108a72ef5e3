"""Routing: which model (if any) a complete study goes to, decided by rules/routing.yaml."""

from triage.routing.facts import RoutingFacts
from triage.routing.rules import RoutingRule, RoutingRules, load_routing_rules, route

__all__ = ["RoutingFacts", "RoutingRule", "RoutingRules", "load_routing_rules", "route"]
