"""Layers resource: groups of mutually exclusive experiments and their bucket ranges."""
from __future__ import annotations

import uuid

import marshmallow as ma
from flask.views import MethodView
from marshmallow import fields, validate

from services.experiments import layers as service

from . import context
from .auth import require
from .input_guard import Blueprint
from .schemas import StrictSchema

blp = Blueprint("layers", __name__, url_prefix="/api/layers", description="Layers: mutually exclusive experiments")


class LayerCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(load_default="", validate=validate.Length(max=10_000))


class LayerRangeSchema(ma.Schema):
    experiment_id = fields.UUID()
    experiment_name = fields.String()
    start = fields.Integer(metadata={"description": "First bucket owned (inclusive)."})
    end = fields.Integer(metadata={"description": "End of the range (exclusive)."})
    allocation = fields.Float()


class FreeRangeSchema(ma.Schema):
    start = fields.Integer()
    end = fields.Integer()


class LayerExperimentSchema(ma.Schema):
    id = fields.UUID()
    name = fields.String()
    status = fields.String()
    allocation = fields.Float()


class LayerOutSchema(ma.Schema):
    id = fields.UUID()
    name = fields.String()
    description = fields.String()
    created_by = fields.String()
    created_at = fields.DateTime()
    buckets = fields.Integer(metadata={"description": "Always 10,000."})
    ranges = fields.List(fields.Nested(LayerRangeSchema), metadata={"description": "Running experiments' bucket ranges."})
    free_percent = fields.Float()
    largest_free_percent = fields.Float(metadata={"description": "Largest allocation that can start now."})
    free_ranges = fields.List(fields.Nested(FreeRangeSchema))
    experiments = fields.List(fields.Nested(LayerExperimentSchema), metadata={"description": "Every experiment naming the layer."})


def _out(layer) -> dict:
    return {
        "id": layer.id,
        "name": layer.name,
        "description": layer.description,
        "created_by": layer.created_by,
        "created_at": layer.created_at,
        "buckets": service.BUCKETS,
        **service.usage(context.session(), layer),
    }


@blp.route("")
class LayerCollection(MethodView):
    @require("list_layers")
    @blp.response(200, LayerOutSchema(many=True))
    def get(self):
        """List layers with their capacity."""
        return [_out(layer) for layer in service.list_layers(context.session())]

    @require("create_layer")
    @blp.arguments(LayerCreateSchema)
    @blp.response(201, LayerOutSchema)
    @blp.alt_response(409, description="The name is taken")
    def post(self, data: dict):
        """Create a layer (names are unique)."""
        layer = service.create_layer(context.session(), data, context.actor())
        context.session().commit()
        return _out(layer)


@blp.route("/<uuid:layer_id>")
class LayerItem(MethodView):
    @require("list_layers")
    @blp.response(200, LayerOutSchema)
    def get(self, layer_id: uuid.UUID):
        """One layer: which experiment owns which buckets, and what is free."""
        return _out(service.get_layer(context.session(), layer_id))
