from rest_framework.response import Response
from rest_framework.views import APIView


class SmartConfigurationView(APIView):
    """Placeholder until the SMART authorization server lands."""

    def get(self, request):
        return Response({})
